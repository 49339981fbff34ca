"""What the demo's support tickets are made of: the four teams' issues (each with the priority its wording implies),
the cues that raise or lower a priority, and the greetings, names, products and sign-offs that vary the tickets."""

from __future__ import annotations

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
