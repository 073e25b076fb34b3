"""A small practice written straight into a migrated billing database, for the document and
email tests: a complete client whose bill AutoPay paid, a client with a hostile name and
address (markup that would read a canary file if it were ever taken as HTML), and a client
whose superbill lacks a date of birth and a diagnosis.

Rows are written directly (no Stripe, no Dagster) so that each test knows every field it
should find in a PDF. The names and ids are the tests' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert

from billing_pipeline.db import models as m

TZ = "America/New_York"
PRACTICE = {
    "id": "acct-docs",
    "name": "Harbor Family Therapy",
    "timezone": TZ,
    "npi": "1245319599",
    "tax_id": "98-7654321",
    "address": "12 Water Street, Suite 4\nBoston, MA 02110",
    "phone": "(617) 555-0142",
    "provider_name": "Maya Okafor",
    "provider_credentials": "PhD, LMFT",
    "provider_npi": "1679576722",
    "provider_license_number": "LMFT-88213",
    "provider_taxonomy": "106H00000X",
    "bill_creation": "daily",
    "superbill_day_of_month": 1,
    "autopay_enabled": True,
}
SHARING = {
    "share_bills": True,
    "bill_delay_minutes": 60,
    "share_superbills": True,
    "superbill_delay_minutes": 0,
    "share_statements": True,
    "statement_delay_minutes": 0,
}


def hostile(canary: Path) -> dict[str, str]:
    """Markup that an unsafe setup would act on: attach, embed or style-load the canary."""
    url = canary.as_uri()
    return {
        "name": f'<link rel="attachment" href="{url}">Eve "Mallory"',
        "address": (
            f"<style>@import url({url});</style><img src='{url}'><object data='{url}'>"
            f'</object>\n<a href="{url}">1 Evil Way</a> & Co'
        ),
    }


@dataclass(frozen=True)
class DocumentsData:
    bill_id: int
    superbill_id: int
    statement_id: int
    hostile_bill_id: int
    incomplete_superbill_id: int
    delivery_ids: tuple[int, ...]
    paid_at: datetime


def write_practice(engine: Engine, canary: Path) -> DocumentsData:
    """The practice, three clients, their October sessions, bills, superbills and a November
    statement, and one due delivery per document (scheduled in the past)."""
    evil = hostile(canary)
    created = datetime(2026, 8, 1, 14, tzinfo=UTC)
    paid_at = datetime(2026, 10, 6, 4, 30, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(m.Account).values(**PRACTICE))
        conn.execute(
            insert(m.BillingContact).values(
                id="bc-docs-parent",
                account_id="acct-docs",
                name="Paul Parent",
                email="paul.parent@example.test",
                autopay_enabled=True,
            )
        )
        clients = [
            {
                "id": "cl-docs-lily",
                "name": "Lily Chen",
                "email": "lily.chen@example.test",
                "date_of_birth": date(2011, 2, 14),
                "address": "7 Elm Road\nCambridge, MA 02139",
                "insurance_member_id": "XKJ123456789",
                "billing_contact_id": "bc-docs-parent",
            },
            {
                "id": "cl-docs-eve",
                "name": evil["name"],
                "email": "eve@example.test",
                "date_of_birth": date(1990, 5, 17),
                "address": evil["address"],
                "insurance_member_id": "EVE-1",
                "billing_contact_id": None,
            },
            {
                "id": "cl-docs-noah",
                "name": "Noah Brandt",
                "email": None,  # no address: the email cannot be sent
                "date_of_birth": None,
                "address": None,
                "insurance_member_id": None,
                "billing_contact_id": None,
            },
        ]
        for c in clients:
            conn.execute(
                insert(m.Client).values(
                    **c,
                    account_id="acct-docs",
                    created_at=created,
                    auto_bill=True,
                    superbills_enabled=True,
                    autopay_enabled=True,
                    **SHARING,
                )
            )
        for position, code in enumerate(["F41.1", "F90.0", "Z63.0"]):
            conn.execute(
                insert(m.Diagnosis).values(
                    client_id="cl-docs-lily", position=position, icd10_code=code
                )
            )
        conn.execute(
            insert(m.Diagnosis).values(client_id="cl-docs-eve", position=0, icd10_code="F32.1")
        )
        sessions = [
            ("s-lily-1005", "cl-docs-lily", datetime(2026, 10, 5, 18, tzinfo=UTC), "11"),
            ("s-lily-1012", "cl-docs-lily", datetime(2026, 10, 12, 18, tzinfo=UTC), "02"),
            ("s-eve-1007", "cl-docs-eve", datetime(2026, 10, 7, 15, tzinfo=UTC), "11"),
            ("s-noah-1008", "cl-docs-noah", datetime(2026, 10, 8, 15, tzinfo=UTC), "11"),
        ]
        services = {
            "s-lily-1005": [("90837", 1, 18000, "HJ"), ("90785", 1, 2500, "")],
            "s-lily-1012": [("90834", 1, 15000, "95")],
            "s-eve-1007": [("90834", 1, 15000, "")],
            "s-noah-1008": [("90832", 2, 6000, "")],
        }
        for sid, cid, at, pos in sessions:
            conn.execute(
                insert(m.SessionRow).values(
                    id=sid,
                    client_id=cid,
                    starts_at=at,
                    status="attended",
                    source="native",
                    place_of_service=pos,
                )
            )
            for position, (cpt, units, fee, mods) in enumerate(services[sid]):
                conn.execute(
                    insert(m.SessionService).values(
                        session_id=sid,
                        position=position,
                        cpt=cpt,
                        units=units,
                        fee_cents=fee,
                        modifiers=mods,
                    )
                )

        def bill(cid: str, sid: str, night: date, paid: datetime | None) -> int:
            lines = services[sid]
            amount = sum(u * f for _c, u, f, _m in lines)
            created_at = datetime.combine(night + timedelta(days=1), datetime.min.time(), UTC)
            created_at += timedelta(hours=4)
            bill_id: int = conn.execute(
                insert(m.Bill)
                .values(
                    account_id="acct-docs",
                    client_id=cid,
                    night=night,
                    created_at=created_at,
                    amount_cents=amount,
                    status="paid" if paid else "open",
                    paid_at=paid,
                )
                .returning(m.Bill.id)
            ).scalar_one()
            conn.execute(insert(m.BillSession).values(session_id=sid, bill_id=bill_id))
            for cpt, units, fee, mods in lines:
                conn.execute(
                    insert(m.BillLineRow).values(
                        bill_id=bill_id,
                        session_id=sid,
                        cpt=cpt,
                        units=units,
                        fee_cents=fee,
                        modifiers=mods,
                        amount_cents=units * fee,
                    )
                )
            return bill_id

        lily_bill = bill("cl-docs-lily", "s-lily-1005", date(2026, 10, 5), paid_at)
        bill("cl-docs-lily", "s-lily-1012", date(2026, 10, 12), None)
        eve_bill = bill("cl-docs-eve", "s-eve-1007", date(2026, 10, 7), None)
        bill("cl-docs-noah", "s-noah-1008", date(2026, 10, 8), None)

        conn.execute(
            insert(m.PaymentMethod).values(
                id="pm-docs-parent",
                account_id="acct-docs",
                owner_type="billing_contact",
                owner_id="bc-docs-parent",
                stripe_customer_id="cus_docs",
                stripe_payment_method_id="pm_docs",
                brand="visa",
                last4="4242",
                exp_month=12,
                exp_year=2030,
                created_at=created,
            )
        )
        attempt_id = conn.execute(
            insert(m.AutopayAttempt)
            .values(
                idempotency_key="docs-attempt-1",
                account_id="acct-docs",
                client_id="cl-docs-lily",
                night=date(2026, 10, 5),
                payer="billing_contact",
                payer_id="bc-docs-parent",
                payment_method_id="pm-docs-parent",
                amount_cents=20500,
                status="succeeded",
                attempted_at=paid_at,
                claimed_at=paid_at,
                completed_at=paid_at,
            )
            .returning(m.AutopayAttempt.id)
        ).scalar_one()
        conn.execute(insert(m.AutopayAttemptBill).values(attempt_id=attempt_id, bill_id=lily_bill))
        conn.execute(
            insert(m.Payment).values(
                attempt_id=attempt_id,
                account_id="acct-docs",
                client_id="cl-docs-lily",
                amount_cents=20500,
                paid_at=paid_at,
                stripe_payment_intent_id="pi_docs_1",
            )
        )

        november_1 = datetime(2026, 11, 1, 4, tzinfo=UTC)  # 00:00 in New York
        superbills = {}
        for cid, sids in (
            ("cl-docs-lily", ["s-lily-1005", "s-lily-1012"]),
            ("cl-docs-eve", ["s-eve-1007"]),
            ("cl-docs-noah", ["s-noah-1008"]),
        ):
            sb_id = conn.execute(
                insert(m.Superbill)
                .values(
                    account_id="acct-docs",
                    client_id=cid,
                    month="2026-10",
                    night=date(2026, 10, 31),
                    created_at=november_1,
                )
                .returning(m.Superbill.id)
            ).scalar_one()
            for sid in sids:
                conn.execute(insert(m.SuperbillSession).values(superbill_id=sb_id, session_id=sid))
            superbills[cid] = sb_id
        statement_id = conn.execute(
            insert(m.Statement)
            .values(
                account_id="acct-docs",
                client_id="cl-docs-lily",
                month="2026-10",
                night=date(2026, 10, 31),
                created_at=november_1,
                open_balance_cents=15000,
            )
            .returning(m.Statement.id)
        ).scalar_one()

        deliveries = []
        due = datetime(2026, 11, 1, 5, tzinfo=UTC)
        for kind, doc_id, cid, recipient, recipient_id in (
            ("bill", lily_bill, "cl-docs-lily", "billing_contact", "bc-docs-parent"),
            ("bill", eve_bill, "cl-docs-eve", "client", "cl-docs-eve"),
            (
                "superbill",
                superbills["cl-docs-lily"],
                "cl-docs-lily",
                "billing_contact",
                "bc-docs-parent",
            ),
            ("superbill", superbills["cl-docs-noah"], "cl-docs-noah", "client", "cl-docs-noah"),
            ("statement", statement_id, "cl-docs-lily", "billing_contact", "bc-docs-parent"),
        ):
            deliveries.append(
                conn.execute(
                    insert(m.Delivery)
                    .values(
                        document_type=kind,
                        document_id=doc_id,
                        account_id="acct-docs",
                        client_id=cid,
                        night=date(2026, 10, 31),
                        recipient=recipient,
                        recipient_id=recipient_id,
                        scheduled_at=due,
                        wait_for_autopay=False,
                    )
                    .returning(m.Delivery.id)
                ).scalar_one()
            )
    return DocumentsData(
        bill_id=lily_bill,
        superbill_id=superbills["cl-docs-lily"],
        statement_id=statement_id,
        hostile_bill_id=eve_bill,
        incomplete_superbill_id=superbills["cl-docs-noah"],
        delivery_ids=tuple(deliveries),
        paid_at=paid_at,
    )


# Everything personal in the data above: no email may carry any of it.
PHI = [
    "Lily Chen",
    "Lily",
    "Paul Parent",
    "Noah Brandt",
    "Mallory",
    "lily.chen@example.test",
    "2011-02-14",
    "02/14/2011",
    "1990-05-17",
    "05/17/1990",
    "F41.1",
    "F90.0",
    "Z63.0",
    "F32.1",
    "XKJ123456789",
    "$205.00",
    "$180.00",
    "$150.00",
    "205.00",
    "150.00",
]
