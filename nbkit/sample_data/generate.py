"""Build the bundled sample data set: support tickets -> a fixed JSON triage record.

Each row is a chat with three messages: a short system prompt, a customer support
ticket written the way customers write them, and the answer as one line of compact
JSON in a fixed shape, such as ``{"team": "billing", "priority": "high"}``. The
``label`` field repeats the team so that splits can be stratified.

The task teaches a *pattern*, not facts. A small instruct model (SmolLM2-135M-Instruct)
answers such tickets in prose, which never matches the JSON. After a short LoRA run
it should reply with exactly the JSON record. To make that learnable in a
few hundred steps, the labels follow clear cues:

* team comes from the topic: money (charges, refunds, invoices, cards), account
  access (login, password, 2FA, email change, deletion), the product misbehaving
  (crashes, errors, sync, slowness, bugs), or delivery (late, lost, damaged, tracking,
  address);
* priority is ``high`` when the ticket signals urgency or serious harm ("urgent",
  "asap", "can't work", "charged twice", "locked out"), ``low`` when it is a
  question or suggestion with no impact ("just wondering", "no rush", "feature
  idea"), and ``normal`` otherwise.

The same cues are worded many ways and wrapped in greetings, context, sign-offs,
names, order numbers, dates, casual lower case and the odd typo, so that the
tickets vary and the held-out rows are not copies of training rows.

Standard library only. Deterministic for a given ``--seed``:

    python -m nbkit.sample_data.generate            # writes support_triage.jsonl here
    python nbkit/sample_data/generate.py --n 400 --seed 7 --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from nbkit.sample_data.phrases import (
    CARDS,
    COMPANIES,
    CONTEXT,
    COUNTRIES,
    DEVICES,
    DOMAINS,
    FILLERS,
    GREETINGS,
    ISSUES,
    ITEMS,
    MONTHS,
    NAMES,
    NO_RUSH,
    NO_RUSH_PREFIX,
    PLANS,
    PRIORITY_SHARE,
    PRODUCTS,
    SIGNOFFS,
    SYSTEM,
    TEAMS,
    URGENT,
    URGENT_PREFIX,
)


def fill(template: str, rng: random.Random, name: str) -> str:
    """Fill the {slots} in one fragment with fresh random values."""
    month = rng.choice(MONTHS)
    currency, cents, base = rng.choice("$$$€£"), rng.choice([".00", ".99", ".49"]), rng.randint(5, 200)
    values = {
        "name": name,
        "amount": f"{currency}{base}{cents}",
        "amount2": f"{currency}{base + rng.randint(2, 40)}{cents}",  # a price rise, same currency
        "month": month,
        # Every date reads after "on" and "since".
        "date": rng.choice(
            [
                f"{month} {rng.randint(1, 28)}",
                f"{rng.randint(1, 28)}/{rng.randint(1, 12)}",
                "Monday",
                "Tuesday",
                "Friday",
                "the 3rd",
                "the weekend",
            ]
        ),
        # Order ids in the shapes customers actually type them.
        "order": rng.choice(["#{}", "#{}", "{}", "NB-{}"]).format(rng.randint(10000, 99999)),
        "code": rng.choice(["SPRING", "WELCOME", "SAVE", "VIP"]) + str(rng.randint(10, 50)),
        "plan": rng.choice(PLANS),
        "card": rng.choice(CARDS),
        "email": f"{name.split()[0].lower()}{rng.choice(['', '.', '_'])}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}",
        "product": rng.choice(PRODUCTS),
        "device": rng.choice(DEVICES),
        "errcode": rng.choice(["E", "ERR-", "", "0x"]) + str(rng.randint(100, 999)),
        "version": f"{rng.randint(2, 5)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}",
        "item": rng.choice(ITEMS),
        "country": rng.choice(COUNTRIES),
        "company": rng.choice(COMPANIES),
        "year": str(rng.randint(2015, 2023)),
    }
    text = template.format(**values)
    return text[0].upper() + text[1:]  # "{product} crashes" -> "The app crashes"


def typo(sentence: str, rng: random.Random) -> str:
    """Swap, drop or double one letter of one longer word, as hurried typing does."""
    words = sentence.split(" ")
    spots = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not spots:
        return sentence
    i = rng.choice(spots)
    w, j = words[i], rng.randint(1, len(words[i]) - 2)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap":
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == "drop":
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def lower_first(s: str) -> str:
    # Keep "I" and "I'm" capitalised when a prefix like "No rush, but " goes in front.
    return s if s.startswith(("I ", "I'")) else s[0].lower() + s[1:]


def ticket(team: str, priority: str, rng: random.Random) -> str:
    """Write one ticket whose cues say `team` (the topic) and `priority`."""
    name = rng.choice(NAMES)

    def f(t):
        return fill(t, rng, name)

    # Priority comes either from the issue itself or from an added cue sentence.
    own = priority != "normal" and rng.random() < 0.55
    issue = f(rng.choice(ISSUES[team][priority if own else "normal"]))
    if rng.random() < 0.12:
        issue = typo(issue, rng)

    cue_before = cue_after = ""
    if priority != "normal" and (not own or rng.random() < 0.25):
        before, after = (URGENT_PREFIX, URGENT) if priority == "high" else (NO_RUSH_PREFIX, NO_RUSH)
        if rng.random() < 0.25:
            cue_before = rng.choice(before)
            if not cue_before.endswith(": ") and not cue_before.endswith("- "):
                issue = lower_first(issue)
        else:
            cue_after = rng.choice(after)

    # Optional context and filler give 1-4 sentences in all.
    body = [cue_before + issue]
    if rng.random() < 0.3:
        body.insert(0, f(rng.choice(CONTEXT)))
    if cue_after:
        body.append(cue_after)
    if rng.random() < 0.4:
        body.append(rng.choice(FILLERS))
    text = " ".join(body)

    if rng.random() < 0.6:
        text = rng.choice(GREETINGS) + rng.choice([" ", "\n"]) + text
    if rng.random() < 0.5:
        text = text + "\n" + f(rng.choice(SIGNOFFS))
    if rng.random() < 0.08:  # some people type everything in lower case
        text = text.lower()
    return text


def plan(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(team, priority) for every row: teams equal, the same priority mix in each team."""
    rows = []
    for k, team in enumerate(TEAMS):
        size = n // len(TEAMS) + (k < n % len(TEAMS))
        high, low = round(size * PRIORITY_SHARE["high"]), round(size * PRIORITY_SHARE["low"])
        rows += [(team, "high")] * high + [(team, "low")] * low + [(team, "normal")] * (size - high - low)
    rng.shuffle(rows)
    return rows


def build(n: int = 400, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    seen, rows = set(), []
    for team, priority in plan(n, rng):
        for _ in range(100):  # redraw on an exact duplicate ticket
            text = ticket(team, priority, rng)
            if text not in seen:
                break
        else:
            raise RuntimeError(f"could not write a new {team}/{priority} ticket; lower --n")
        seen.add(text)
        answer = json.dumps({"team": team, "priority": priority}, separators=(", ", ": "))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer},
                ],
                "label": team,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of rows (default 400)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("support_triage.jsonl"))
    args = parser.parse_args(argv)

    rows = build(args.n, args.seed)
    with open(args.out, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    pairs = Counter(json.loads(r["messages"][2]["content"])["priority"] for r in rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    print("team:    ", dict(sorted(Counter(r["label"] for r in rows).items())))
    print("priority:", dict(sorted(pairs.items())))


if __name__ == "__main__":
    main()
