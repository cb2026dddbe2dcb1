"""tool_required scenarios: OpenAI tool definitions and user requests that need exactly one of them.

Each row offers 3-5 tools; the request determines which one and its arguments. Names and descriptions
vary across the set, so the specialist learns to pick a tool by reading the offered list, not by
memorising one list.
"""

from __future__ import annotations

import random
from typing import Any

from demo.data.world import PLANS, invoice_id


def _fn(name: str, desc: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


_S = {"type": "string"}
_TEAMS = ["billing", "technical", "security", "legal"]
_PRIOS = ["low", "normal", "high", "urgent"]
TOOLS: list[dict[str, Any]] = [
    _fn("lookup_invoice", "Look up an invoice by its id: amount, status and dates.", {"invoice_id": _S},
        ["invoice_id"]),
    _fn("issue_refund", "Refund all or part of a paid invoice to the original payment method.",
        {"invoice_id": _S, "amount": {"type": "number"},
         "reason": {"type": "string",
                    "enum": ["duplicate_charge", "billing_error", "within_refund_window", "goodwill"]}},
        ["invoice_id", "amount", "reason"]),
    _fn("get_subscription", "Plan, seats and renewal date of an account.", {"account_id": _S}, ["account_id"]),
    _fn("cancel_subscription", "Stop an account's renewal at the end of the paid period.", {"account_id": _S},
        ["account_id"]),
    _fn("change_plan", "Move an account to another plan.",
        {"account_id": _S, "plan": {"type": "string", "enum": PLANS}},
        ["account_id", "plan"]),
    _fn("get_refund_status", "Status of a refund by its reference.", {"refund_id": _S}, ["refund_id"]),
    _fn("track_shipment", "Delivery status of a hardware order by its order number.", {"order_number": _S},
        ["order_number"]),
    _fn("handoff_to_agent", "Transfer the conversation to a human team.",
        {"team": {"type": "string", "enum": _TEAMS}, "priority": {"type": "string", "enum": _PRIOS},
         "summary": _S}, ["team", "priority", "summary"]),
    _fn("send_invoice_copy", "Email a copy of an invoice.", {"invoice_id": _S, "email": _S}, ["invoice_id", "email"]),
    _fn("check_service_status", "Current service status in a region.", {"region": _S}, ["region"]),
]
_EMAILS = ["ana@example.com", "li.wei@acme.io", "finance@contoso.org", "sam@orchardbikes.com"]
_HANDOFFS = [
    ("billing", "high", "Customer disputes an annual charge and asks for a billing lead.",
     "I dispute the annual charge and want a billing lead to review it."),
    ("billing", "normal", "Customer wants a custom payment schedule approved.",
     "Can a person approve splitting our invoice into three payments?"),
    ("security", "urgent", "Customer reports a suspicious login and possible account takeover.",
     "Someone logged into our account from another country and changed the owner email!"),
    ("security", "high", "Former employee still has access to the account.",
     "A contractor we let go can still sign in. Get someone on this now."),
    ("technical", "high", "Data sync has failed for two days with error 500.",
     "Sync keeps failing with error 500 since Monday. I need an engineer."),
    ("technical", "normal", "API requests time out for the customer's integration.",
     "Our API integration times out on every call, please pass this to a technician."),
    ("legal", "normal", "Customer requests a signed data processing agreement.",
     "Our lawyer needs a signed DPA. Who can handle that?"),
]


def tool_request(r: random.Random, name: str) -> tuple[str, dict[str, Any]]:
    """A user message that needs tool `name`, and the arguments it determines."""
    inv, acct = invoice_id(r), f"ACC-{r.randint(1000, 9999)}"
    if name == "lookup_invoice":
        return r.choice([f"What's the status of invoice {inv}?", f"Was {inv} paid already?",
                         f"How much was {inv} and when was it due?"]), {"invoice_id": inv}
    if name == "issue_refund":
        amt = r.choice([12, 19, 29, 49, 89, 129, 490])
        reason, text = r.choice([
            ("duplicate_charge", f"{inv} charged ${amt} twice, refund the duplicate."),
            ("billing_error", f"We were billed ${amt} on {inv} by mistake after cancelling. Refund it."),
            ("within_refund_window", f"Refund the ${amt} annual plan on {inv}, we bought it last week."),
        ])
        return text, {"invoice_id": inv, "amount": amt, "reason": reason}
    if name == "get_subscription":
        return r.choice([f"Which plan is account {acct} on?", f"When does {acct} renew?"]), {"account_id": acct}
    if name == "cancel_subscription":
        return r.choice([f"Cancel the subscription for {acct}.", f"Please stop renewing account {acct}."]), \
            {"account_id": acct}
    if name == "change_plan":
        plan = r.choice(PLANS)
        return r.choice([f"Switch {acct} to the {plan} plan.", f"Move account {acct} onto {plan}."]), \
            {"account_id": acct, "plan": plan}
    if name == "get_refund_status":
        ref = f"RF-{r.randint(100000, 999999)}"
        return r.choice([f"Has refund {ref} been processed?", f"Check refund {ref} for me."]), {"refund_id": ref}
    if name == "track_shipment":
        order = f"{r.choice(['NW', 'BD', 'TB', 'HL'])}-{r.randint(10000, 99999)}"
        return r.choice([f"Where's my card reader? Order {order}.", f"Did order {order} ship?",
                         f"Tracking update for {order} please."]), {"order_number": order}
    if name == "handoff_to_agent":
        team, prio, summary, text = r.choice(_HANDOFFS)
        return text, {"team": team, "priority": prio, "summary": summary}
    if name == "send_invoice_copy":
        email = r.choice(_EMAILS)
        return r.choice([f"Email a copy of {inv} to {email}.", f"Send {inv} to {email} please."]), \
            {"invoice_id": inv, "email": email}
    if name == "check_service_status":
        region = r.choice(["eu-west", "us-east", "ap-south"])
        return r.choice([f"Is the service down in {region}?", f"Any incident in {region} right now?"]), \
            {"region": region}
    raise KeyError(name)
