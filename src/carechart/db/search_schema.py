"""Search-index tables (owned by the search engine, :mod:`carechart.fhir.search`).

One table per search-parameter type of http://hl7.org/fhir/R4/search.html §"Search
Parameter Types" (string, token, date, number, quantity, reference, uri), plus
``search_blind`` for the keyed blind-index tokens that stand in for PHI parameters
(names, addresses, telecom, identifiers, birth dates), which never reach these tables
in plaintext. Every row carries ``tenant_id``, ``resource_type``, ``resource_id`` and the
parameter ``code``; rows are replaced as a whole each time the resource is written.

Composite parameters (§3.1.1.5.8 "composite") are indexed as rows of their components'
types, in the same tables, with ``code`` = ``<composite>$<component index>`` and ``grp`` =
the ordinal of the focus element the components came from (one Observation.component,
say), so a query joins components of the same element only. Ordinary rows have ``grp``
NULL. ``search_blind_bits`` records how many bits each (tenant, type, parameter) blind
index keeps (see :mod:`carechart.fhir.search.buckets`).

Ranges are stored as inclusive ``low``/``high`` bounds so that one comparison shape serves
the prefixes eq/ne/lt/gt/le/ge/sa/eb/ap: dates as epoch milliseconds (UTC), numbers and
quantities as doubles. Unbounded ends hold :data:`LOW_END`/:data:`HIGH_END` (dates) or
``±FLOAT_END`` (numbers), never NULL, so the comparisons need no NULL handling.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from carechart.db.schema import RID, RTYPE, TENANT, metadata

__all__ = [
    "FLOAT_END",
    "HIGH_END",
    "INDEX_TABLES",
    "LOW_END",
    "TEXT_LEN",
    "URI_LEN",
    "metadata",
    "search_blind",
    "search_blind_bits",
    "search_date",
    "search_number",
    "search_quantity",
    "search_reference",
    "search_string",
    "search_token",
    "search_uri",
]

#: Longest indexed text (strings, codes, systems); longer values are cut at extraction.
TEXT_LEN = 255
#: Longest indexed URI/URL (uri params, absolute and canonical references).
URI_LEN = 512
#: Open ends of date ranges (epoch ms), outside any FHIR date (years 0001-9999).
LOW_END = -(2**62)
HIGH_END = 2**62
#: Open ends of number/quantity ranges.
FLOAT_END = 1e300

PARAM = sa.String(64)
TEXT = sa.String(TEXT_LEN)
URI = sa.String(URI_LEN)


def _index_table(
    name: str,
    short: str,
    *columns: sa.Column[Any],
    value_index: tuple[str, ...],
    trailing: tuple[str, ...] = (),
    pattern_column: str | None = None,
    grouped: bool = True,
) -> sa.Table:
    """An index table: owner columns, the value columns, a lookup index for the query
    (tenant, type, code, values...) and one on the owner for replace-on-write."""
    return sa.Table(
        name,
        metadata,
        sa.Column("tenant_id", TENANT, nullable=False),
        sa.Column("resource_type", RTYPE, nullable=False),
        sa.Column("resource_id", RID, nullable=False),
        sa.Column("code", PARAM, nullable=False),
        *columns,
        # Focus-element ordinal of a composite's component rows; NULL on ordinary rows.
        *([sa.Column("grp", sa.SmallInteger, nullable=True)] if grouped else []),
        sa.Index(
            f"ix_{short}_value",
            "tenant_id",
            "resource_type",
            "code",
            *value_index,
            "resource_id",
            # Columns only filtered on, after resource_id so joins on the id stay ordered.
            *trailing,
            # PostgreSQL uses a btree for LIKE 'prefix%' only with pattern ops (any collation).
            postgresql_ops={pattern_column: "text_pattern_ops"} if pattern_column else {},
        ),
        sa.Index(f"ix_{short}_owner", "tenant_id", "resource_type", "resource_id"),
    )


search_string = _index_table(
    "search_string",
    "sstr",
    # Casefolded, accent-stripped text: prefix and contains matching.
    sa.Column("value_norm", TEXT, nullable=False),
    # As written, for :exact.
    sa.Column("value_exact", TEXT, nullable=False),
    value_index=("value_norm",),
    pattern_column="value_norm",
)

search_token = _index_table(
    "search_token",
    "stok",
    sa.Column("system", URI, nullable=True),
    sa.Column("value", TEXT, nullable=True),
    # Normalised display/text, for :text.
    sa.Column("text_norm", TEXT, nullable=True),
    # Identifier.type coding, for :of-type.
    sa.Column("type_system", URI, nullable=True),
    sa.Column("type_code", TEXT, nullable=True),
    # Most token searches give a code without a system (code=8867-4): the resource id must
    # follow the value directly for chains and joins to walk the index in id order.
    value_index=("value",),
    trailing=("system",),
)

search_date = _index_table(
    "search_date",
    "sdate",
    sa.Column("low", sa.BigInteger, nullable=False),
    sa.Column("high", sa.BigInteger, nullable=False),
    value_index=("low", "high"),
)

search_number = _index_table(
    "search_number",
    "snum",
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    value_index=("low", "high"),
)

search_quantity = _index_table(
    "search_quantity",
    "sqty",
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    sa.Column("system", URI, nullable=True),
    sa.Column("unit_code", TEXT, nullable=True),
    sa.Column("unit", TEXT, nullable=True),
    value_index=("unit_code", "low"),
)

search_reference = _index_table(
    "search_reference",
    "sref",
    sa.Column("target_type", RTYPE, nullable=True),
    sa.Column("target_id", RID, nullable=True),
    # Absolute or canonical URL (without |version), when the reference is one.
    sa.Column("url", URI, nullable=True),
    value_index=("target_id", "target_type"),
)

search_uri = _index_table(
    "search_uri",
    "suri",
    sa.Column("uri", URI, nullable=False),
    value_index=("uri",),
    pattern_column="uri",
)

search_blind = _index_table(
    "search_blind",
    "sbld",
    # Truncated HMAC of a normalised value (carechart.crypto.blind.blind_token).
    sa.Column("token", sa.String(16), nullable=False),
    value_index=("token",),
    grouped=False,
)

search_blind_bits = sa.Table(
    "search_blind_bits",
    metadata,
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("resource_type", RTYPE, nullable=False),
    sa.Column("code", PARAM, nullable=False),
    # Bits kept of each HMAC for this parameter's tokens (writes and queries agree on it).
    sa.Column("bits", sa.SmallInteger, nullable=False),
    # Resources carrying the parameter when the bits were planned.
    sa.Column("planned_rows", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "resource_type", "code", name="pk_search_blind_bits"),
)

INDEX_TABLES: dict[str, sa.Table] = {
    "string": search_string,
    "token": search_token,
    "date": search_date,
    "number": search_number,
    "quantity": search_quantity,
    "reference": search_reference,
    "uri": search_uri,
    "blind": search_blind,
}
