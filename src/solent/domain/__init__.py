"""Pure domain: identifiers, records, outcomes. No I/O here."""
