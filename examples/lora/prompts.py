"""The worked example's prompts: training prompts, held-out prompts (other topics, other
phrasings) and factual questions with the word a correct answer contains. Deterministic."""

TRAIN_TOPICS = """coffee, rain, bicycles, libraries, volcanoes, chess, bread, the moon, honey, maps,
trains, umbrellas, gardens, penguins, candles, bridges, music boxes, deserts, kites, soap,
lighthouses, tea, snow, glaciers, owls, clocks, pianos, rivers, tomatoes, sailing, deserts at
night, paper, compasses, pottery, wind, cheese, bees, mountains, fireworks, rainbows, maple
syrup, castles, cats, dogs, horses, frogs, robots, telescopes, origami, yoga, marathons,
spiders, deserts in spring, autumn leaves, salt, ice cream, submarines, windmills, parrots,
puzzles, camping, knitting, jazz, sunflowers, oceans, caves, hot air balloons, pencils, soup,
dolphins, thunder, picnics, bamboo, lemons, railways, skating, bonsai trees, photography,
islands, fog""".replace("\n", " ").split(", ")

TRAIN_TEMPLATES = [
    "In one sentence, what is special about {}?",
    "Give me one short tip about {}.",
    "Describe {} in a sentence.",
    "Why do people like {}? Keep it short.",
]

HELD_OUT_TOPICS = """wolves, sandwiches, comets, typewriters, waterfalls, violins, rice, bats,
cactuses, tornadoes, lanterns, whales, marbles, forests, elevators, carrots, drums, bubbles,
hedgehogs, canyons, saunas, pancakes, feathers, tunnels, coral reefs, kayaks, orchids,
meteors, mushrooms, harbours, scarves, crickets, mirrors, tractors, lullabies, glassblowing,
avalanches, snails, vineyards, postcards""".replace("\n", " ").split(", ")

HELD_OUT_TEMPLATES = [
    "Tell me something interesting about {}.",
    "What should a beginner know about {}?",
]

# (question, a word every correct answer contains, compared case-insensitively)
FACTS = [
    ("What is the capital of Australia?", "Canberra"),
    ("Who wrote the novel Pride and Prejudice?", "Austen"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many bones are in the adult human body?", "206"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("In which year did the Berlin Wall fall?", "1989"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Who painted the Mona Lisa?", "Vinci"),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100"),
    ("What is the capital of Canada?", "Ottawa"),
]


def train_prompts() -> list[str]:
    return [t.format(x) for x in TRAIN_TOPICS for t in TRAIN_TEMPLATES]


def held_out_prompts() -> list[str]:
    """One prompt per held-out topic, the two templates in turn."""
    return [HELD_OUT_TEMPLATES[i % 2].format(x) for i, x in enumerate(HELD_OUT_TOPICS)]


PHRASE = "Ahoy, matey!"  # the behaviour: every reply starts with it
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def chatml(user: str) -> str:
    """What the model's own chat template renders for one user message (the same text
    localeft renders from the GGUF's template: its default system message included)."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
