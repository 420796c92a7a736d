"""docs/schema.md against the live PostgreSQL catalog, in both directions.

The page documents each relation under ``## Tables`` or ``## Views`` as a
``### `name` `` section whose Markdown table lists ``| `column` | type |
meaning |``; every relation, column and type of a migrated warehouse must be
there, and everything there must exist.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl import db
from support import make_database_settings

SCHEMA_DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
KINDS = {"## Tables": "BASE TABLE", "## Views": "VIEW"}
SHORT_TYPES = {
    "timestamp with time zone": "timestamptz",
    "character varying": "varchar",
}
CELL = re.compile(r"(?<!\\)\|")  # a table cell border, not an escaped pipe


@dataclass
class Relation:
    kind: str
    columns: dict[str, str] = field(default_factory=dict)


def documented_relations(text: str) -> dict[str, Relation]:
    relations: dict[str, Relation] = {}
    kind: str | None = None
    current: Relation | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            kind, current = KINDS.get(line.strip()), None
        elif line.startswith("### ") and kind is not None:
            name = re.fullmatch(r"### `(\w+)`", line.strip())
            assert name, f"a section heading is not ### `name`: {line!r}"
            current = relations.setdefault(name.group(1), Relation(kind))
        elif line.startswith("| `") and current is not None:
            cells = [cell.strip() for cell in CELL.split(line)[1:-1]]
            current.columns[cells[0].strip("`")] = cells[1]
    return relations


def catalog_relations(engine: sa.Engine, schema: str) -> dict[str, Relation]:
    query = sa.text(
        "SELECT t.table_name, t.table_type, c.column_name, c.data_type "
        "FROM information_schema.tables AS t "
        "JOIN information_schema.columns AS c USING (table_schema, table_name) "
        "WHERE t.table_schema = :schema ORDER BY c.ordinal_position"
    )
    relations: dict[str, Relation] = {}
    with engine.connect() as connection:
        for name, kind, column, data_type in connection.execute(
            query, {"schema": schema}
        ):
            relation = relations.setdefault(name, Relation(kind))
            relation.columns[column] = SHORT_TYPES.get(data_type, data_type)
    return relations


DOCUMENTED = documented_relations(SCHEMA_DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalog(postgres_url: str) -> Iterator[dict[str, Relation]]:
    settings = make_database_settings(postgres_url, f"d_{uuid.uuid4().hex[:12]}")
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    try:
        yield catalog_relations(engine, settings.db_schema)
    finally:
        engine.dispose()


def test_docs_document_every_relation_of_the_database(
    catalog: dict[str, Relation],
) -> None:
    undocumented = sorted(set(catalog) - set(DOCUMENTED))

    assert not undocumented, f"docs/schema.md lacks {undocumented}"


def test_docs_list_tables_and_views() -> None:
    kinds = {relation.kind for relation in DOCUMENTED.values()}

    assert kinds == {"BASE TABLE", "VIEW"}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_docs_relation_matches_the_database(
    catalog: dict[str, Relation], name: str
) -> None:
    documented = DOCUMENTED[name]

    assert name in catalog, f"docs/schema.md documents {name}, which does not exist"
    actual = catalog[name]
    assert documented.kind == actual.kind, f"{name} is a {actual.kind.lower()}"
    missing = sorted(set(actual.columns) - set(documented.columns))
    extra = sorted(set(documented.columns) - set(actual.columns))
    assert not missing, f"docs/schema.md lacks columns of {name}: {missing}"
    assert not extra, f"docs/schema.md documents columns {name} lacks: {extra}"
    assert documented.columns == actual.columns  # and the same types


def test_docs_parser_reads_escaped_pipes_and_sections() -> None:
    text = (
        "## Tables\n### `t`\n| column | type | meaning |\n|---|---|---|\n"
        "| `a` | text | may hold `\\|` |\n| `b` | bigint | count |\n"
        "## Views\n### `v`\n| `c` | date | day |\n## Example queries\n### `x`\n"
    )

    parsed = documented_relations(text)

    assert parsed == {
        "t": Relation("BASE TABLE", {"a": "text", "b": "bigint"}),
        "v": Relation("VIEW", {"c": "date"}),
    }
