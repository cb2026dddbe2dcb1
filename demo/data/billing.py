"""billing_refund scenarios: an account record + the refund policy as context, a customer asking about a
charge or a refund, and the answer a good agent gives — amounts, invoice ids, card and dates copied from
the record, timings copied from the policy, nothing invented.

Each scenario: (random) -> Case. Denials are policy statements ("is not refunded"), never "I can't help",
which is reserved for out-of-domain refusals.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from demo.data.world import MONTHS, Company, account, company, date, invoice_id, next_day


@dataclass(frozen=True)
class Case:
    company: Company
    context: str | None
    user: str
    answer: str
    facts: list[str]


def duplicate_charge(r: random.Random) -> Case:
    c, a = company(r), account(r)
    d, inv1, inv2 = date(r), invoice_id(r), invoice_id(r)
    rec = (f"{a.header()} Invoice {inv1}: ${a.price}.00, paid {d}. Invoice {inv2}: ${a.price}.00, paid {d}, flagged "
           f"as a duplicate of {inv1}; refund of ${a.price}.00 issued {next_day(d)}, status pending.")
    user = r.choice([
        f"Why was ${a.price} taken from my card twice on {d}?",
        f"My {a.card} got hit twice for the {a.plan} plan. Can you check?",
        f"{a.person} from {a.org} here. There are two identical ${a.price} payments on our statement.",
        f"We were double-billed on {d}, what's going on?",
    ])
    ans = (f"Sorry about that. Invoice {inv2} (${a.price}.00, paid {d}) was a duplicate of {inv1}, and a refund of "
           f"${a.price}.00 was issued on {next_day(d)}. Duplicate charges are always refunded in full; it reaches "
           f"your {a.card} ending {a.last4} within {c.refund_range} business days.")
    return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, [f"${a.price}", "duplicate", c.refund_range])


def refund_status(r: random.Random) -> Case:
    c, a = company(r), account(r)
    d, inv = date(r), invoice_id(r)
    rec = (f"{a.header()} Invoice {inv}: ${a.price}.00, paid {d}. Refund of ${a.price}.00 for {inv} issued "
           f"{next_day(d, 2)} to {a.card} ending {a.last4}, status pending.")
    user = r.choice([
        f"Any news on the refund for {inv}?",
        f"When will the ${a.price} refund show up on my card?",
        f"{a.person} here, you said {inv} would be refunded. Where is it?",
    ])
    ans = (f"The ${a.price}.00 refund for {inv} was issued on {next_day(d, 2)} to your {a.card} ending {a.last4}. "
           f"Refunds reach the original payment method within {c.refund_range} business days, so it should arrive "
           "within that window.")
    return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, [f"${a.price}", a.last4, c.refund_range])


def charged_after_cancel(r: random.Random) -> Case:
    c, a = company(r), account(r)
    m = r.randrange(len(MONTHS) - 1)
    cancelled, charged, inv = date(r, MONTHS[m], r.randint(2, 20)), date(r, MONTHS[m + 1], 25), invoice_id(r)
    rec = (f"{a.header()} Subscription cancelled on {cancelled}. Invoice {inv}: ${a.price}.00, charged {charged}, "
           "after the cancellation (renewal was not stopped: billing error).")
    user = r.choice([
        f"I cancelled on {cancelled} and you still charged me ${a.price}. Refund it please.",
        f"Why did {a.org} get charged ${a.price} after we cancelled?",
    ])
    ans = (f"You're right: you cancelled on {cancelled}, and invoice {inv} (${a.price}.00, {charged}) was charged "
           f"in error after the cancellation. Billing errors are always refunded in full, so the ${a.price}.00 "
           f"refund goes back to your {a.card} ending {a.last4} within {c.refund_range} business days.")
    return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, [f"${a.price}", "in error", "refund"])


def cancelled_mid_month(r: random.Random) -> Case:
    c, a = company(r), account(r)
    m = r.randrange(len(MONTHS) - 1)
    day = r.randint(3, 20)
    paid, cancelled = date(r, MONTHS[m], day), date(r, MONTHS[m], day + r.randint(2, 6))
    end = date(r, MONTHS[m + 1], day)
    inv = invoice_id(r)
    rec = (f"{a.header()} Invoice {inv}: ${a.price}.00, paid {paid} for the month ending {end}. Subscription "
           f"cancelled on {cancelled}; the account stays active until {end}.")
    user = r.choice([
        f"I cancelled a few days after paying ${a.price}. Can I get the rest of the month back?",
        f"We cancelled on {cancelled}. Why were we charged ${a.price} for the whole month?",
    ])
    ans = (f"Invoice {inv} (${a.price}.00) was paid on {paid}, before you cancelled on {cancelled}. Monthly plans are "
           f"not refunded for partial months, so this charge stays, but your account remains active until {end}, "
           "the end of the paid month, and nothing more will be charged.")
    return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, ["not refunded", end])


def annual_refund(r: random.Random) -> Case:
    c, a = company(r), account(r, annual=True)
    ago = r.choice([r.randint(2, c.refund_days - 1), c.refund_days + r.randint(3, 90)])
    inv = invoice_id(r)
    rec = f"{a.header('annual')} Invoice {inv}: ${a.price}.00, annual renewal {ago} days ago."
    user = r.choice([
        f"We renewed {a.plan} yearly {ago} days ago but no longer need it. Refund please.",
        f"{a.person} at {a.org}: can the annual plan we paid {ago} days ago be refunded?",
        f"Please cancel and refund our ${a.price} annual subscription.",
    ])
    if ago < c.refund_days:
        ans = (f"Yes. Annual plans can be refunded in full within {c.refund_days} days of purchase or renewal, and "
               f"yours renewed {ago} days ago, so the full ${a.price}.00 on {inv} is refundable. It reaches your "
               f"{a.card} ending {a.last4} within {c.refund_range} business days.")
        return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, [f"${a.price}", str(c.refund_days), c.refund_range])
    ans = (f"Annual plans can be refunded only within {c.refund_days} days of purchase or renewal, and yours renewed "
           f"{ago} days ago, so the ${a.price}.00 is not refunded under the policy; the account stays active until the "
           "end of the term. Exceptions need approval from a billing lead: I can escalate your request, but I "
           "can't promise the outcome.")
    return Case(c, rec + "\n\n" + c.refund_policy(), user, ans, [str(c.refund_days), "billing lead"])


def failed_payment(r: random.Random) -> Case:
    c, a = company(r), account(r)
    k, days = r.choice([2, 3, 4]), r.choice([7, 10, 14])
    ctx = (f"{a.header()}\n\n{c.name} payment policy. A failed card payment is retried {k} times over {days} days. "
           "Customers update their card under Billing > Payment methods. "
           "The workspace is paused if the last retry fails.")
    user = r.choice([
        "My payment failed this morning. What happens now?",
        f"Our {a.card} was declined for the renewal. Will we lose access?",
    ])
    ans = (f"We retry a failed payment {k} times over {days} days. To avoid an interruption, update your card under "
           "Billing > Payment methods; if the last retry fails, the workspace is paused until the payment "
           "goes through.")
    return Case(c, ctx, user, ans, [str(k), str(days)])


def invoice_copy(r: random.Random) -> Case:
    c, inv = company(r), invoice_id(r)
    user = r.choice([f"Can you resend invoice {inv}? I can't find it.", f"I need a PDF of {inv} for our accountant."])
    ans = (f"You can download invoice {inv} as a PDF under Billing > Invoices in your {c.name} account. If you don't "
           "have billing access, ask an account owner to download it or to make you a billing admin.")
    return Case(c, None, user, ans, [inv])


BILLING_SCENARIOS: list[Callable[[random.Random], Case]] = [
    duplicate_charge, duplicate_charge, refund_status, refund_status, charged_after_cancel, cancelled_mid_month,
    annual_refund, annual_refund, failed_payment, invoice_copy,
]
