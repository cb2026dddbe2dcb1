"""Fixed facts of the fictional company behind the example dataset: Quillstack, bookkeeping
software for small businesses. Policies here are the `context` of policy rows; tools are the
OpenAI tool definitions offered in tool_required rows. Used by build_support_cohorts.py.
"""

from __future__ import annotations

from typing import Any

SYSTEM = (
    "You are Quill, the support assistant for Quillstack, bookkeeping software for small businesses. "
    "Help only with Quillstack billing, accounts, orders and policies; politely decline anything else and say "
    "what you can help with. Use the tools when a lookup or an action is needed. Never promise refunds, credits "
    "or exceptions that the policy does not allow."
)

PLANS = {"Starter": (19, 190), "Team": (49, 490), "Business": (129, 1290)}  # monthly, annual USD

POLICIES = {
    "refund": (
        "Quillstack refund policy (v3, effective 2026-01-15). Monthly plans are not refunded for partial months; "
        "cancelling stops the next renewal and the account stays active until the end of the paid month. "
        "Annual plans can be refunded in full within 30 days of the purchase or renewal date. After 30 days, "
        "annual plans are not refunded and the account stays active until the end of the term. Duplicate charges "
        "and billing errors are always refunded in full. Refunds return to the original payment method within "
        "5-10 business days. Support may not promise refunds outside this policy; exceptions require approval "
        "from a billing lead, requested through an escalation."
    ),
    "trial": (
        "Quillstack trial policy. Every organisation gets one free trial of 14 days on the Team plan. Support can "
        "extend a trial once, by 7 days, when the customer has an open onboarding ticket. A second trial for the "
        "same organisation is not available, even with a new email address. Data entered during a trial is kept "
        "for 30 days after the trial ends."
    ),
    "payment": (
        "Quillstack payment policy. Invoices are due 15 days after issue. A failed card payment is retried on "
        "days 3, 5 and 7; after the third failure the account becomes read-only until the balance is paid. "
        "Quillstack does not charge late fees. An account that stays read-only for 60 days is closed, and its "
        "data is deleted 30 days after closure. Payment by bank transfer is available on annual Business plans only."
    ),
    "hardware": (
        "Quillstack ReceiptScanner returns. Unopened devices can be returned within 45 days of delivery for a full "
        "refund. Opened devices in working order can be returned within 45 days with a $15 restocking fee. "
        "Defective devices are replaced free of charge under the 1-year warranty; a replacement ships within "
        "2 business days after the defect is confirmed. Return shipping labels are emailed by support."
    ),
    "discount": (
        "Quillstack discounts. Registered nonprofits get 30% off Team and Business annual plans after sending "
        "proof of status. Accredited schools get 50% off any annual plan. Discounts start with the next invoice "
        "and are never applied retroactively to past invoices. Discounts cannot be combined; the larger one applies."
    ),
    "data": (
        "Quillstack data policy. Customers can export all their data (CSV and PDF) at any time on every plan, "
        "including read-only accounts. After cancellation, data is retained for 90 days and can be restored by "
        "reactivating the subscription; after 90 days it is permanently deleted. Support cannot recover data "
        "after permanent deletion. Account ownership can be transferred only by the current owner or, if the owner "
        "has left the company, after identity verification by the security team."
    ),
}


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required, "additionalProperties": False},
        },
    }


TOOLS = [
    _tool(
        "lookup_invoice",
        "Fetch an invoice by id: amount, status, plan, dates and payment method.",
        {"invoice_id": {"type": "string", "pattern": "^INV-[0-9]{5}$"}},
        ["invoice_id"],
    ),
    _tool(
        "issue_refund",
        "Refund all or part of a paid invoice to the original payment method.",
        {
            "invoice_id": {"type": "string", "pattern": "^INV-[0-9]{5}$"},
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "reason": {
                "type": "string",
                "enum": [
                    "duplicate_charge",
                    "billing_error",
                    "annual_within_30_days",
                    "hardware_return",
                    "approved_exception",
                ],
            },
        },
        ["invoice_id", "amount", "reason"],
    ),
    _tool(
        "get_order_status",
        "Shipping status of a ReceiptScanner hardware order.",
        {"order_id": {"type": "string", "pattern": "^QS-[0-9]{5}$"}},
        ["order_id"],
    ),
    _tool(
        "escalate_to_human",
        "Hand the conversation to a human agent (billing lead, security, legal).",
        {
            "team": {"type": "string", "enum": ["billing", "security", "legal", "technical"]},
            "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
            "summary": {"type": "string", "minLength": 10},
        },
        ["team", "priority", "summary"],
    ),
]

TRIAGE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["invoice_id", "amount", "refund_eligible", "reason", "customer_message"],
    "properties": {
        "invoice_id": {"type": "string", "pattern": "^INV-[0-9]{5}$"},
        "amount": {"type": "number", "minimum": 0},
        "refund_eligible": {"type": "boolean"},
        "reason": {
            "type": "string",
            "enum": [
                "duplicate_charge",
                "billing_error",
                "annual_within_30_days",
                "monthly_partial_month",
                "annual_after_30_days",
            ],
        },
        "customer_message": {"type": "string", "minLength": 20},
    },
}
