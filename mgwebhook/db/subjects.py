"""Selection of the subject tables (documents and tenants) from the configuration."""

from __future__ import annotations

from sqlalchemy import MetaData

from mgwebhook.config import SubjectSettings
from mgwebhook.db.schema import (
    DEFAULT_SUBJECT_TABLES,
    SUBJECT_TABLES,
    SubjectTable,
    subject_table,
)


def configure_subjects(settings: SubjectSettings) -> dict[str, SubjectTable]:
    """Point SUBJECT_TABLES at the configured tables and return them.

    The default settings select mgwebhook's own `documents` and `tenants`.
    """
    tables = dict(DEFAULT_SUBJECT_TABLES)
    if settings != SubjectSettings():
        # A metadata of their own keeps mapped tables out of every create_all.
        target = MetaData()
        for kind in ("document", "tenant"):
            mapping = getattr(settings, kind)
            tables[kind] = subject_table(
                kind,
                mapping.table,
                id_column=mapping.id_column,
                id_type=mapping.id_type,
                message_id_column=mapping.message_id_column,
                status_column=mapping.status_column,
                status_updated_at_column=mapping.status_updated_at_column or None,
                managed=settings.managed,
                target=target,
            )
    SUBJECT_TABLES.clear()
    SUBJECT_TABLES.update(tables)
    return SUBJECT_TABLES
