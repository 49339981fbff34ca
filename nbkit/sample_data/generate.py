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

# Deliberately short: the examples teach the schema and the allowed values, so every request
# stays cheap (a long instruction would be most of each example's tokens).
SYSTEM = "Triage the support ticket. Reply with JSON: team and priority."
TEAMS = ("billing", "account", "technical", "shipping")
# Share of each priority within every team (high, normal, low).
PRIORITY_SHARE = {"high": 0.30, "normal": 0.45, "low": 0.25}

# --- Issue sentences, per team. Each says what is wrong; "{x}" slots are filled below.
# "normal" issues carry no urgency of their own; "high" ones are serious by themselves;
# "low" ones are questions or suggestions with no impact.
ISSUES = {
    "billing": {
        "normal": [
            "I was charged {amount} on {date} and I don't recognize it.",
            "My invoice for {month} shows the wrong amount.",
            "I'd like a refund for my {plan} renewal.",
            "My card keeps getting declined when I try to upgrade to the {plan}.",
            "The price of my subscription went up from {amount} to {amount2} without any notice.",
            "I need a copy of the invoice for order {order} for my expense report.",
            "I cancelled the {plan} last month but was still billed {amount}.",
            "The discount code {code} wasn't applied to my invoice.",
            "Please update the billing address on my invoices to our new office.",
            "I was billed for the yearly plan but I picked monthly.",
            "My refund for order {order} hasn't shown up on my {card} yet.",
            "How do I switch my payment method from my {card} to PayPal?",
            "The VAT number is missing from my last invoice.",
            "My {card} was declined even though it has plenty of funds.",
        ],
        "high": [
            "I've been charged twice for order {order}.",
            "You charged my {card} {amount} three times this month!",
            "There are duplicate charges of {amount} on my statement.",
            "I was charged {amount} after cancelling and now my rent payment bounced.",
            "There are charges on my {card} that I never authorized.",
            "I got double charged for the {plan} and my account is now overdrawn.",
        ],
        "low": [
            "Just wondering if you offer a student discount on the {plan}.",
            "Out of curiosity, do you accept PayPal for the {plan}?",
            "Quick question: are the prices for the {plan} shown with tax included?",
            "Suggestion: it would be nice if invoices could be downloaded as CSV.",
            "Is there a discount if I pay for a whole year? Just curious.",
            "I was wondering whether invoices can also go to a second email address.",
        ],
    },
    "account": {
        "normal": [
            "I can't reset my password, the reset email never arrives.",
            "I want to change the email on my account from {email} to a new one.",
            "The 2FA codes from my authenticator app are being rejected.",
            "I'd like to delete my account please.",
            "I keep getting logged out of my account every few minutes.",
            "The login page says {email} is not registered, but I've had an account for years.",
            "I got a new phone and need to move my two-factor authentication to it.",
            "Can you merge my two accounts? The old one is {email}.",
            "I never received the verification email after signing up.",
            "I want to turn off two-factor authentication on my account.",
            "The password reset link says it has expired every time I click it.",
            "Please close my account and confirm when it's done.",
            "I can't log in with Google anymore, it just sends me back to the sign-in page.",
        ],
        "high": [
            "I'm locked out of my account.",
            "Someone logged into my account and changed my password.",
            "I've been locked out after too many login attempts and can't access anything.",
            "My account was hacked and the email was changed to one I don't know.",
            "I lost my phone with my 2FA codes and I'm completely locked out.",
            "Someone is using my account without permission.",
        ],
        "low": [
            "Just wondering whether I can change my username later on.",
            "Is it possible to have two emails on one account? Just curious.",
            "Feature idea: let us log in with a passkey.",
            "Out of curiosity, how long do you keep data after an account is deleted?",
            "Suggestion: the account settings page could show when I last logged in.",
            "I was wondering if I can add a recovery email to my account.",
        ],
    },
    "technical": {
        "normal": [
            "{product} crashes when I open the settings page.",
            'I get "Error {errcode}" each time I try to export a report.',
            "Sync between my laptop and {product} stopped working on {date}.",
            "{product} has become really slow since the latest update.",
            "Notifications in {product} don't show up anymore.",
            "Uploading a file bigger than 10 MB fails with a spinning wheel.",
            "The search bar in {product} returns no results at all.",
            "In dark mode some buttons are invisible in {product}.",
            "{product} freezes for a few seconds every time I switch tabs.",
            "After updating to version {version}, {product} won't start.",
            "The charts on my dashboard don't load, they stay blank.",
            "I found a bug: dates in {product} show in the wrong time zone.",
            "Attachments fail to sync from {product} with error {errcode}.",
            "{product} crashes every time I try to print.",
        ],
        "high": [
            "{product} crashes on launch and I can't work.",
            "All my data disappeared from {product} after the update.",
            "Our whole team gets error {errcode} and nobody can work.",
            "Sync deleted all my notes in {product}.",
            "{product} is completely down for us, nothing loads.",
            "Every project in {product} is gone and we lost all our data.",
        ],
        "low": [
            "Feature idea: it would be great if {product} had keyboard shortcuts.",
            "Just wondering if a dark mode is planned for {product}.",
            "Tiny thing: there's a typo on the settings screen in {product}.",
            "Minor cosmetic bug: the icon looks a bit blurry in {product}.",
            "Do you have a public API? Just curious.",
            "Suggestion: let us pick the font size in {product}.",
        ],
    },
    "shipping": {
        "normal": [
            "My order {order} was supposed to arrive on {date} but hasn't come yet.",
            "The tracking number for order {order} doesn't work on the carrier's site.",
            "I need to change the delivery address for order {order}.",
            "My package arrived damaged, the box was crushed.",
            "Tracking for order {order} hasn't updated in five days.",
            "I received the wrong item in order {order}.",
            "Part of my order {order} is missing from the box.",
            "The courier left my parcel at the wrong address.",
            "Can you ship order {order} to my office instead of my home?",
            "Tracking says order {order} was delivered but there's no package here.",
            "The {item} in order {order} arrived scratched.",
            "My delivery has been stuck at the depot since {date}.",
        ],
        "high": [
            "Order {order} is lost and I need it for an event tomorrow.",
            "Order {order} went to my old address and I need the {item} right now.",
            "The {item} I ordered ({order}) is two weeks late and my business can't run without it.",
            "My package was stolen from the doorstep and it was an expensive {item}.",
            "Order {order} never arrived and it's a gift for tomorrow morning.",
        ],
        "low": [
            "Just wondering if you ship to {country}.",
            "Do you offer gift wrapping? Just curious.",
            "Out of curiosity, which carrier do you use for deliveries?",
            "Suggestion: it would be nice to pick a delivery time slot.",
            "I was wondering if I can get paper-free packaging next time.",
            "Quick question: how long does shipping to {country} usually take?",
        ],
    },
}

# --- Extra sentences that set the priority of a "normal" issue.
URGENT = [
    "This is urgent.",
    "URGENT!!",
    "Please fix this asap.",
    "I need this sorted right now.",
    "I can't work until this is fixed.",
    "Please help immediately.",
    "This is blocking my whole team.",
    "I need this resolved today, it's critical.",
    "This is an emergency.",
    "Please treat this as urgent.",
    "It's costing us money every hour.",
    "Need help ASAP!",
    "Please, this is really urgent.",
]
URGENT_PREFIX = ["URGENT: ", "Urgent - ", "ASAP please: ", "Emergency: "]
NO_RUSH = [
    "No rush.",
    "No rush at all, whenever you get a chance.",
    "Not urgent.",
    "Whenever you have time.",
    "Just letting you know, it's not a big deal.",
    "Low priority on my end.",
    "Take your time.",
    "It's not affecting my work, just thought I'd mention it.",
    "No impact really, just a heads-up.",
    "Not a big deal, just curious what happened.",
    "Look at it when you get a chance.",
]
NO_RUSH_PREFIX = ["No rush, but ", "Not urgent, but ", "When you get a chance: ", "Just a heads-up, "]

# --- Fragments that carry no cue at all: safe around any ticket.
GREETINGS = [
    "Hi,",
    "Hello,",
    "Hey there,",
    "Hi team,",
    "Good morning,",
    "Hi support,",
    "Dear Support Team,",
    "Hello Nimbus team,",
    "Hey,",
    "Good afternoon,",
    "Hi folks,",
]
CONTEXT = [
    "I've been a customer since {year}.",
    "My account email is {email}.",
    "This started on {date}.",
    "I'm writing for our team at {company}.",
    "I'm on {device}, if that matters.",
    "I already contacted you once about this.",
    "I tried again this morning.",
]
FILLERS = [
    "Thanks.",
    "Could you look into it?",
    "Let me know if you need anything from me.",
    "Thanks in advance.",
    "Appreciate the help.",
    "Can you help?",
    "Any idea what's going on?",
    "Please advise.",
    "What should I do?",
]
SIGNOFFS = [
    "Thanks, {name}",
    "Best, {name}",
    "- {name}",
    "Regards,\n{name}",
    "Cheers,\n{name}",
    "Thank you!\n{name}",
    "{name}",
    "Kind regards, {name}",
]

# --- Slot values.
NAMES = [
    "Anna",
    "Ben",
    "Carlos",
    "Dana",
    "Emeka",
    "Fatima",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Keisha",
    "Liam",
    "Mei",
    "Nikolai",
    "Olivia",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Marta K.",
    "Tom R.",
    "Aisha B.",
    "Pedro",
    "Sophie",
    "Raj",
    "Lena",
    "Omar",
    "Chloe",
]
PRODUCTS = [
    "the app",
    "the iOS app",
    "the Android app",
    "the desktop app",
    "the web dashboard",
    "the Mac app",
    "the Windows app",
    "the browser extension",
    "Nimbus",
]
DEVICES = ["an iPhone 13", "a Pixel 7", "Windows 11", "a MacBook Air", "an iPad", "Ubuntu", "a Galaxy S22"]
PLANS = ["Pro plan", "Team plan", "Basic plan", "Family plan", "Business plan", "Premium plan"]
CARDS = ["Visa", "Mastercard", "Amex", "debit card", "credit card"]
ITEMS = ["headphones", "laptop stand", "keyboard", "camera", "desk lamp", "router", "monitor", "charger"]
COUNTRIES = ["Canada", "Ireland", "Japan", "Mexico", "Norway", "Australia", "Brazil", "Poland"]
COMPANIES = ["Brightline", "Kolibri GmbH", "Oakridge Dental", "Studio Nove", "Tanaka & Co", "Fernhill"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "example.org"]


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
