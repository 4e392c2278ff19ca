"""Write sppo_ray/data/prompts/verifiable.jsonl: everyday tasks with 1-3 IFEval-style verifiable instructions.

The tasks and wordings were written for this project (IFEval's own 541 prompts stay a clean benchmark). Each task
gets five instruction combinations; the last 20 tasks are held out (``split: eval``), so evaluation asks for the
same kinds of instructions on tasks no round trained on. Deterministic: the same file on every run.

    .venv/bin/python scripts/make_verifiable_prompts.py          # rewrite the file
    .venv/bin/python scripts/make_verifiable_prompts.py --check  # exit 1 if the file is not what this writes
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sppo_ray" / "data" / "prompts" / "verifiable.jsonl"
PER_TASK = 5
EVAL_TASKS = 20
SEED = 15

# (task, a word a plain answer tends to use, a related word it often does not, True if it is a note or letter)
TASKS = [
    ("Write a short note to a neighbour about a lost cat.", "cat", "whiskers", True),
    ("Describe a sunny day at the beach.", "beach", "waves", False),
    ("Give some tips for staying focused while studying.", "study", "break", False),
    ("Explain why people should drink enough water.", "water", "health", False),
    ("Write a thank-you message to a teacher.", "teacher", "grateful", True),
    ("Suggest a simple breakfast for a busy morning.", "breakfast", "oats", False),
    ("Describe your ideal weekend.", "weekend", "relax", False),
    ("Explain how to plant a tomato seed.", "seed", "soil", False),
    ("Write a short invitation to a birthday party.", "party", "cake", True),
    ("Give advice to someone starting their first job.", "job", "colleagues", False),
    ("Describe a walk through a forest in autumn.", "forest", "leaves", False),
    ("Explain why sleep is important.", "sleep", "energy", False),
    ("Write a message asking a friend to return a borrowed book.", "book", "shelf", True),
    ("Suggest a few ways to save money on groceries.", "money", "list", False),
    ("Describe the taste of a fresh orange.", "orange", "juicy", False),
    ("Explain how to make a cup of tea.", "tea", "kettle", False),
    ("Write a short apology for missing a meeting.", "meeting", "schedule", True),
    ("Give tips for keeping a houseplant alive.", "plant", "sunlight", False),
    ("Describe a busy train station.", "train", "platform", False),
    ("Explain what a rainbow is to a child.", "rainbow", "colors", False),
    ("Write a note reminding your family to buy milk.", "milk", "fridge", True),
    ("Suggest a name for a small bakery and explain it.", "bakery", "bread", False),
    ("Describe a dog playing in the snow.", "dog", "tail", False),
    ("Explain why recycling helps the planet.", "recycling", "waste", False),
    ("Write a short welcome message for a new club member.", "club", "meet", True),
    ("Give advice for a first camping trip.", "camping", "tent", False),
    ("Describe the sound of rain on a window.", "rain", "gentle", False),
    ("Explain how a bicycle works in simple words.", "bicycle", "pedals", False),
    ("Write a postcard from a holiday in the mountains.", "mountains", "view", True),
    ("Suggest three games to play on a rainy afternoon.", "games", "cards", False),
    ("Describe a favourite childhood toy.", "toy", "memories", False),
    ("Explain why exercise is good for the heart.", "exercise", "blood", False),
    ("Write a note to a coworker about a lunch order.", "lunch", "sandwich", True),
    ("Give tips for learning a new language.", "language", "practice", False),
    ("Describe a quiet library.", "library", "pages", False),
    ("Explain how bees make honey.", "honey", "flowers", False),
    ("Write a message congratulating a friend on a new baby.", "baby", "family", True),
    ("Suggest a healthy snack for children.", "snack", "fruit", False),
    ("Describe a night sky full of stars.", "stars", "moon", False),
    ("Explain how to wash your hands properly.", "hands", "soap", False),
    ("Write a short review of a pizza restaurant.", "pizza", "cheese", False),
    ("Give advice on packing for a weekend trip.", "trip", "bag", False),
    ("Describe a farmers market on a Saturday morning.", "market", "vegetables", False),
    ("Explain why the sky looks blue.", "sky", "light", False),
    ("Write a note to a landlord about a leaking tap.", "tap", "repair", True),
    ("Suggest ways to make a small room feel bigger.", "room", "mirror", False),
    ("Describe the first snowfall of winter.", "snow", "cold", False),
    ("Explain how to care for a pet goldfish.", "goldfish", "tank", False),
    ("Write a message inviting friends to a picnic.", "picnic", "park", True),
    ("Give tips for a good night of sleep.", "night", "screen", False),
    ("Describe a walk along a river.", "river", "bridge", False),
    ("Explain what a volcano is.", "volcano", "lava", False),
    ("Write a thank-you note for a birthday present.", "present", "scarf", True),
    ("Suggest a simple dinner for two people.", "dinner", "pasta", False),
    ("Describe a street after a summer storm.", "storm", "puddles", False),
    ("Explain why we should turn off lights we are not using.", "lights", "electricity", False),
    ("Write a short message cancelling a dentist appointment.", "appointment", "reschedule", True),
    ("Give advice for speaking in front of a class.", "class", "nervous", False),
    ("Describe a cup of hot chocolate on a cold day.", "chocolate", "warm", False),
    ("Explain how a compass helps hikers.", "compass", "north", False),
    ("Write a note for a babysitter about bedtime.", "bedtime", "story", True),
    ("Suggest ways to spend less time on a phone.", "phone", "hobby", False),
    ("Describe a colourful garden in spring.", "garden", "tulips", False),
    ("Explain why the moon changes shape.", "moon", "sun", False),
    ("Write a message thanking a neighbour for watering your plants.", "plants", "kind", True),
    ("Give tips for staying safe while cycling.", "cycling", "helmet", False),
    ("Describe a crowded city bus at rush hour.", "bus", "seats", False),
    ("Explain how to fold a paper airplane.", "paper", "wings", False),
    ("Write a short announcement about a school bake sale.", "sale", "cookies", True),
    ("Suggest a few easy ways to drink more water.", "water", "bottle", False),
    ("Describe the smell of fresh bread.", "bread", "oven", False),
    ("Explain why trees are important.", "trees", "oxygen", False),
    ("Write a message to a friend who is feeling sad.", "friend", "listen", True),
    ("Give advice for keeping a tidy desk.", "desk", "drawer", False),
    ("Describe a sunset over the sea.", "sunset", "orange", False),
    ("Explain how to boil an egg.", "egg", "minutes", False),
    ("Write a note to a teacher explaining a sick day.", "sick", "fever", True),
    ("Suggest a fun activity for a family on Sunday.", "family", "picnic", False),
    ("Describe an old wooden house.", "house", "porch", False),
    ("Explain how to read a bus timetable.", "timetable", "stop", False),
    ("Write a message asking to borrow a ladder.", "ladder", "weekend", True),
    ("Give tips for making new friends at school.", "friends", "smile", False),
    ("Describe a cat sleeping in the sun.", "cat", "purr", False),
    ("Explain why we brush our teeth.", "teeth", "toothpaste", False),
    ("Write a short note welcoming a new neighbour.", "neighbour", "street", True),
    ("Suggest ways to stay cool on a hot day.", "hot", "shade", False),
    ("Describe a playground full of children.", "playground", "swings", False),
    ("Explain what clouds are made of.", "clouds", "droplets", False),
    ("Write a message to a team about a practice time change.", "practice", "field", True),
    ("Give advice on choosing a good book to read.", "book", "author", False),
    ("Describe a small fishing boat at dawn.", "boat", "harbour", False),
    ("Explain how to make a simple salad.", "salad", "lettuce", False),
    ("Write a short letter to your future self.", "future", "hope", True),
    ("Suggest ways to help an elderly neighbour.", "neighbour", "groceries", False),
    ("Describe the view from a tall building.", "building", "city", False),
    ("Explain why some birds fly south in winter.", "birds", "food", False),
    ("Write a message inviting a coworker to lunch.", "lunch", "cafe", True),
    ("Give tips for a calm morning routine.", "morning", "coffee", False),
    ("Describe a snowman in a front yard.", "snowman", "carrot", False),
    ("Explain how to keep bread fresh longer.", "bread", "freezer", False),
    ("Write a note to a friend returning a borrowed umbrella.", "umbrella", "rain", True),
    ("Suggest a simple way to start journaling.", "journal", "pen", False),
    ("Describe a lighthouse on a rocky coast.", "lighthouse", "ships", False),
    ("Explain why it is good to eat vegetables.", "vegetables", "vitamins", False),
    ("Write a message to a neighbour about a noisy party.", "noise", "tonight", True),
    ("Give advice for a child's first day at school.", "school", "lunchbox", False),
    ("Describe a cozy reading corner.", "corner", "blanket", False),
    ("Explain how a fridge keeps food cold.", "fridge", "air", False),
    ("Write a short note thanking a bus driver.", "driver", "ride", True),
    ("Suggest a few ways to enjoy a walk in the park.", "park", "ducks", False),
]

LOWER, CAPITAL, COMMA = "change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma"
WORDS, END, TITLE = "length_constraints:number_words", "startend:end_checker", "detectable_format:title"
EXISTS, FORBID, FREQ = "keywords:existence", "keywords:forbidden_words", "keywords:frequency"
BULLETS, PS, QUOTE = "detectable_format:number_bullet_lists", "detectable_content:postscript", "startend:quotation"
HIGHLIGHT, PLACEHOLDER = "detectable_format:number_highlighted_sections", "detectable_content:number_placeholders"
TYPES = [LOWER, CAPITAL, COMMA, WORDS, END, TITLE, EXISTS, FORBID, FREQ, BULLETS, PS, QUOTE, HIGHLIGHT, PLACEHOLDER]

# Pairs that cannot (or would read oddly if asked to) hold together: IFEval's own conflicts plus a P.S. in
# lowercase, an end phrase after a P.S., quotes around a list, one keyword rule per prompt.
CONFLICTS = [
    {LOWER, CAPITAL}, {LOWER, PS}, {LOWER, END}, {QUOTE, TITLE}, {QUOTE, BULLETS}, {QUOTE, PS}, {QUOTE, END},
    {END, PS}, {BULLETS, HIGHLIGHT}, {EXISTS, FORBID}, {EXISTS, FREQ}, {FORBID, FREQ}, {CAPITAL, HIGHLIGHT},
]

END_PHRASES = ["Have a nice day.", "Thank you.", "That is all.", "See you soon.", "Any other questions?"]
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _instruction(kind: str, task: tuple, rng: random.Random) -> tuple[dict, str]:
    """(instruction row, its wording in the prompt)."""
    _, likely, related, _ = task
    if kind == LOWER:
        return {}, rng.choice(["Your entire response must be in lowercase letters, with no capital letters at all.",
                               "Write everything in lowercase; do not use any capital letters.",
                               "Use only lowercase letters in your whole answer."])
    if kind == CAPITAL:
        return {}, rng.choice(["Your entire response must be in English and in capital letters only.",
                               "Write your whole answer in capital letters.",
                               "Use only uppercase letters in your response."])
    if kind == COMMA:
        return {}, rng.choice(["Do not use any commas in your response.", "Avoid commas completely.",
                               "Your answer must not contain a single comma."])
    if kind == WORDS:
        if rng.random() < 0.8:
            n = rng.choice([15, 20, 25, 30, 40])
            text = rng.choice([f"Answer in fewer than {n} words.", f"Keep it under {n} words.",
                               f"Use less than {n} words in total."])
            return {"num_words": n, "relation": "less than"}, text
        n = rng.choice([10, 15, 20])
        return {"num_words": n, "relation": "at least"}, rng.choice(
            [f"Write at least {n} words.", f"Your answer should be {n} words or longer."])
    if kind == END:
        phrase = rng.choice(END_PHRASES)
        return {"end_phrase": phrase}, rng.choice(
            [f'End your response with the exact phrase "{phrase}" and nothing after it.',
             f'Finish with the words "{phrase}" with no other words following.'])
    if kind == TITLE:
        return {}, rng.choice(["Give your answer a title wrapped in double angular brackets, such as <<my title>>.",
                               "Start with a title inside double angular brackets, like <<a good day>>."])
    if kind == EXISTS:
        return {"keywords": [related]}, rng.choice([f'Make sure to include the word "{related}".',
                                                    f'Use the word "{related}" somewhere in your answer.'])
    if kind == FORBID:
        return {"forbidden_words": [likely]}, rng.choice([f'Do not use the word "{likely}".',
                                                          f'Never use the word "{likely}" in your answer.'])
    if kind == FREQ:
        n = rng.choice([2, 2, 3])
        return {"keyword": likely, "frequency": n, "relation": "at least"}, rng.choice(
            [f'Use the word "{likely}" at least {NUMBER_WORDS[n]} times.',
             f'Mention "{likely}" {NUMBER_WORDS[n]} or more times.'])
    if kind == BULLETS:
        n = rng.choice([2, 3, 3, 4])
        return {"num_bullets": n}, rng.choice(
            [f'Answer with exactly {n} bullet points, using markdown bullets such as "* item".',
             f'Use exactly {n} bullet points, each starting with "* ".'])
    if kind == PS:
        return {"postscript_marker": "P.S."}, rng.choice(
            ["At the end of your response, add a postscript starting with P.S.",
             "Add a short note at the end that starts with P.S."])
    if kind == QUOTE:
        return {}, rng.choice(["Wrap your entire response in double quotation marks.",
                               "Put your whole answer inside double quotes."])
    if kind == HIGHLIGHT:
        n = rng.choice([1, 1, 2])
        part = f"{NUMBER_WORDS[n]} part" + ("s" if n > 1 else "")
        return {"num_highlights": n}, rng.choice(
            [f"Highlight at least {part} of your answer with markdown, for example *important part*.",
             f"Mark at least {part} in italics with asterisks, like *this*."])
    if kind == PLACEHOLDER:
        n = rng.choice([1, 2])
        noun = f"{NUMBER_WORDS[n]} placeholder" + ("s" if n > 1 else "")
        return {"num_placeholders": n}, rng.choice(
            [f"Include at least {noun} in square brackets, such as [name].",
             f"Leave at least {noun} in square brackets, like [date], for details to fill in later."])
    raise ValueError(kind)


def _compatible(kinds: list[str]) -> bool:
    return len(set(kinds)) == len(kinds) and not any(pair <= set(kinds) for pair in CONFLICTS)


def _combinations(task: tuple, rng: random.Random, counts: dict[str, int]) -> list[list[str]]:
    """PER_TASK distinct combinations of 1-3 instruction types, favouring the types used least so far."""
    allowed = [t for t in TYPES if t != PLACEHOLDER or task[3]]
    combos: list[list[str]] = []
    while len(combos) < PER_TASK:
        size = rng.choices([1, 2, 3], weights=[3, 4, 3])[0]
        combo: list[str] = []
        for _ in range(size):
            options = [t for t in allowed if _compatible(combo + [t])]
            weights = [1.0 / (1 + counts[t]) ** 2 for t in options]
            combo.append(rng.choices(options, weights=weights)[0])
        if sorted(combo) not in [sorted(c) for c in combos]:
            combos.append(combo)
            for t in combo:
                counts[t] += 1
    return combos


def rows() -> list[dict]:
    rng = random.Random(SEED)
    counts = {"train": dict.fromkeys(TYPES, 0), "eval": dict.fromkeys(TYPES, 0)}
    out = []
    for n, task in enumerate(TASKS):
        split = "eval" if n >= len(TASKS) - EVAL_TASKS else "train"
        for combo in _combinations(task, rng, counts[split]):
            built = [(kind, *_instruction(kind, task, rng)) for kind in combo]
            out.append({
                "id": f"v{len(out) + 1:04d}",
                "split": split,
                "prompt": " ".join([task[0]] + [text for _, _, text in built]),
                "instructions": [{"id": kind, "kwargs": kwargs} for kind, kwargs, _ in built],
            })
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows())
    if parser.parse_args().check:
        return 0 if OUT.read_text(encoding="utf-8") == text else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10))} prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
