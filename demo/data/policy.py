"""policy_exception and out_of_domain scenarios.

policy_exception: a policy text as context and a customer asking for an exception; the answer applies
the policy's own numbers and wording (granting only what it allows, naming the escalation path when it
has one) and never claims an action was taken. out_of_domain: a polite refusal that says what the
assistant can help with, naming the company of the system prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from demo.data.billing import Case
from demo.data.world import ORGS, PEOPLE, PLANS, company


def _hi(r: random.Random) -> str:
    return r.choice(["", f"{r.choice(PEOPLE)} from {r.choice(ORGS)} here. ", "Hello! ",
                     f"This is {r.choice(PEOPLE)}. "])


def _ok(r: random.Random) -> str:
    """Varied openings for a granted request: a fixed "Yes." would be learned as *the* way to start."""
    return r.choice(["", "Good news: ", "That works. ", "Yes. "])


def late_refund(r: random.Random) -> Case:
    c = company(r)
    ago = c.refund_days + r.randint(5, 120)
    user = _hi(r) + r.choice([
        f"Our yearly plan renewed {ago} days ago and we forgot to cancel. Could you make an exception and refund it?",
        f"I know the refund window has passed ({ago} days), but we never used the renewal. Any chance of a refund?",
    ])
    ans = (f"Annual plans can be refunded in full only within {c.refund_days} days of purchase or renewal, and your "
           f"renewal was {ago} days ago, so it is not refundable under the policy. Exceptions need approval from a "
           "billing lead: I can escalate your request to a billing lead, but I can't promise the outcome.")
    return Case(c, c.refund_policy(), user, ans, [f"{c.refund_days} days", "billing lead"])


def trial(r: random.Random) -> Case:
    c = company(r)
    t, e = r.choice([7, 14, 21, 30]), r.choice([5, 7, 10])
    ctx = (f"{c.name} trial policy. Each organisation gets one free trial of {t} days. "
           "Support can extend a trial once, "
           f"by {e} days, when the customer has an open onboarding ticket. A second trial for the same organisation "
           "is not available, including with another email address.")
    kind = r.choice(["second", "extend_ticket", "extend_no_ticket"])
    if kind == "second":
        user = _hi(r) + r.choice(["Our trial ran out before we could evaluate. Could we start a new one?",
                                  "Can I sign up for another trial with a different email address?"])
        ans = (f"A second trial is not available: each organisation gets one free trial of {t} days, also with "
               f"another email address. If you have an onboarding ticket open, I can check whether a one-time "
               f"{e}-day extension applies instead.")
        return Case(c, ctx, user, ans, ["one free trial", "not available"])
    if kind == "extend_ticket":
        user = _hi(r) + "Our onboarding ticket is still open and the trial ends soon. Could we get more time?"
        ans = (f"{_ok(r)}Because you have an open onboarding ticket, the trial can be extended once, by {e} days. "
               "It can only be extended one time.")
        return Case(c, ctx, user, ans, [f"{e} days"])
    user = _hi(r) + "We just need a few more days of trial, nothing is blocking us. Could you extend it?"
    ans = (f"The trial can be extended only once, by {e} days, and only when there is an open onboarding ticket, so "
           f"the trial stays at {t} days for now. If setup is blocking you, open an onboarding ticket first.")
    return Case(c, ctx, user, ans, [f"{e} days", "onboarding ticket"])


def data_restore(r: random.Random) -> Case:
    c = company(r)
    keep = r.choice([30, 60, 90, 180])
    ago = r.choice([r.randint(3, keep - 2), keep + r.randint(4, 60)])
    ctx = (f"{c.name} data policy. Customers can export their data at any time. After cancellation, data is kept for "
           f"{keep} days and is restored by reactivating the subscription; after {keep} days it is permanently "
           "deleted and support cannot recover it.")
    user = _hi(r) + r.choice([f"We closed our account {ago} days ago. Is our data still there?",
                              f"Please bring back the records we lost when we cancelled {ago} days ago."])
    if ago < keep:
        ans = (f"{_ok(r)}Data is kept for {keep} days after cancellation, and you cancelled {ago} days ago, so it can "
               "still be restored: reactivate the subscription and your data comes back.")
        return Case(c, ctx, user, ans, [f"{keep} days", "reactivat"])
    ans = (f"Data is kept for {keep} days after cancellation. You cancelled {ago} days ago, so it has been permanently "
           "deleted and cannot be recovered, even as an exception.")
    return Case(c, ctx, user, ans, [f"{keep} days", "permanently deleted"])


def discount(r: random.Random) -> Case:
    c = company(r)
    p = r.choice([20, 25, 40])
    ctx = (f"{c.name} discounts. Registered charities get {p}% off annual plans after sending proof of status. "
           "Discounts start with the next invoice and are never applied retroactively.")
    user = _hi(r) + r.choice(["We're a registered charity. Can you refund the difference on what we paid last year?",
                              "We only just heard of the charity discount. Can you apply it to our past invoices?"])
    ans = (f"Registered charities get {p}% off annual plans once you send proof of status. The discount starts with "
           "your next invoice; it is never applied retroactively, so past invoices stay as they are.")
    return Case(c, ctx, user, ans, [f"{p}%", "next invoice"])


def late_fee(r: random.Random) -> Case:
    c = company(r)
    if r.random() < 0.5:
        ctx = (f"{c.name} payment policy. Invoices are due {r.choice([10, 14, 30])} days after issue. "
               f"{c.name} does not "
               "charge late fees; unpaid accounts become read-only.")
        user = _hi(r) + "Please take the late fee off our overdue invoice."
        ans = (f"{c.name} does not charge late fees, so there is no late fee on your invoice to remove. Overdue "
               "accounts become read-only until the balance is paid.")
        return Case(c, ctx, user, ans, ["does not charge late fees"])
    fee = r.choice([15, 25, 40])
    ctx = (f"{c.name} payment policy. A late fee of ${fee}.00 applies to invoices paid after the due date. It is "
           "waived once per 12 months on request; a second waiver within 12 months is not allowed.")
    first = r.random() < 0.5
    user = _hi(r) + f"Could you drop the ${fee} late fee? " + ("It's our first late payment." if first
                                                                else "I know you waived one for us a few months ago.")
    if first:
        ans = (f"{_ok(r)}The ${fee}.00 late fee can be waived once per 12 months on request, and this is your "
               "first waiver.")
    else:
        ans = (f"The late fee is waived only once per 12 months, and you already had a waiver in the last 12 months, "
               f"so the ${fee}.00 fee stays on the invoice.")
    return Case(c, ctx, user, ans, [f"${fee}", "12 months"])


def device_return(r: random.Random) -> Case:
    c = company(r)
    device = r.choice(["card reader", "label printer", "desk phone", "barcode scanner"])
    days, fee = r.choice([14, 30, 60]), r.choice([10, 20, 25])
    ctx = (f"{c.name} {device} returns. Unopened devices can be returned within {days} days of delivery for a full "
           f"refund. Opened devices in working order can be returned within {days} days with a ${fee} restocking "
           "fee. Defective devices are replaced free of charge under the 1-year warranty.")
    opened = r.random() < 0.6
    got = r.randint(2, days - 1)
    user = _hi(r) + (f"I opened the {device} {got} days ago and it's not for us. Full refund?" if opened
                     else f"Can I send back the {device}? Still sealed, arrived {got} days ago.")
    if opened:
        ans = (f"Opened devices in working order can be returned within {days} days of delivery with a ${fee} "
               f"restocking fee, so you can return the {device}; the refund is the price minus ${fee}.")
        return Case(c, ctx, user, ans, [f"{days} days", f"${fee}"])
    ans = (f"{_ok(r)}Unopened devices can be returned within {days} days of delivery for a full refund, and yours "
           f"arrived {got} days ago.")
    return Case(c, ctx, user, ans, [f"{days} days", "full refund"])


def bank_transfer(r: random.Random) -> Case:
    c = company(r)
    plan = r.choice(PLANS[1:])
    ctx = (f"{c.name} payment methods. Monthly plans are paid by card. Bank transfer is available only on annual "
           f"{plan} plans, with invoices due in 30 days.")
    user = _hi(r) + "Our accounts team can only pay by bank transfer. We're on a monthly plan, does that work?"
    ans = (f"Monthly plans are paid by card; bank transfer is available only on annual {plan} plans. If you switch to "
           f"the annual {plan} plan, you can pay by bank transfer.")
    return Case(c, ctx, user, ans, [f"annual {plan}"])


POLICY_SCENARIOS: list[Callable[[random.Random], Case]] = [
    late_refund, trial, trial, data_restore, data_restore, discount, late_fee, device_return, bank_transfer,
]

_OOD = [
    "Write a haiku about {x}.", "Can you write a birthday message for my {y}?", "What's the best way to cook {z}?",
    "Give me a {n}-day itinerary for {p}.", "Is {coin} a good buy before the next halving?",
    "Solve {a} x {b} for my homework.",
    "My {body} hurts since {n} days, what pills should I take?", "Who won the {sport} in {year}?",
    "How do I say '{phrase}' in {lang}?", "Summarise the plot of {book}.", "How do I unclog a {thing}?",
    "Recommend a good {genre} movie for tonight.", "Can my roommate be evicted without any notice?",
    "Name the capital city of {country} and its population.", "Write a Python script that scrapes {site}.",
    "Tell me a joke about {x}.", "Write a cover story for my {y}'s retirement party.",
    "What's a good workout plan for {n} days a week?", "Can you fix this regex for email validation?",
    "Draft an apology text to my {y}.", "What's the weather in {p} next week?",
    "Rate my chess opening: 1. e4 e5 2. Qh5.", "How many {z} should I buy to feed {n} people?",
    "Which {genre} video game should I play next?", "Help me name my {genre} podcast.",
    "What year did {country} gain independence?", "Compose a rap verse about {x}.", "Give me {n} tips to sleep better.",
    "Is it safe to eat raw {z}?", "Teach me {lang} numbers from 1 to {n}.", "What's the square root of {a}{b}?",
]
_FILL = {
    "x": ["the moon", "coffee", "winter rain", "a lighthouse"], "y": ["sister", "boss", "grandfather"],
    "z": ["salmon", "brussels sprouts", "a steak", "tofu"], "p": ["Porto", "Seoul", "Cape Town", "Oaxaca"],
    "body": ["back", "wrist", "tooth"], "sport": ["Champions League", "NBA finals", "Wimbledon final"],
    "phrase": ["see you tomorrow", "how much is this", "I am lost"], "lang": ["Spanish", "Italian", "Korean"],
    "book": ["Moby Dick", "Pride and Prejudice", "The Hobbit"], "thing": ["sink", "shower drain", "toilet"],
    "genre": ["horror", "comedy", "sci-fi"], "country": ["Australia", "Canada", "Peru"],
    "coin": ["bitcoin", "ether", "dogecoin"],
    "site": ["a news website", "flight prices", "real estate listings"],
}


def out_of_domain(r: random.Random) -> Case:
    c = company(r)
    tpl = r.choice(_OOD)
    user = tpl.format(**{k: r.choice(v) for k, v in _FILL.items()}, n=r.randint(2, 9), a=r.randint(13, 97),
                      b=r.randint(13, 97), year=r.randint(1995, 2023))
    ans = r.choice([
        f"I'm sorry, but that falls outside the scope of {c.name} support. I can only help with your {c.name} "
        "account, billing and subscription questions.",
        f"Sorry, I'm not able to help with that. I can only assist with {c.name} topics such as your account, "
        "invoices, billing and subscription.",
        f"Thanks for asking, but that is outside the scope of what I can do here. I'm happy to help with anything "
        f"about your {c.name} account, billing or subscription.",
        f"Unfortunately that's not something I can help with, as it falls outside the scope of {c.name} support. "
        "Please let me know if you have a question about your account or billing.",
    ])
    return Case(c, None, user, ans, [])
