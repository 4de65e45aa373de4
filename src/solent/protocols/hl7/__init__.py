"""HL7 v2 over MLLP: ADT identity feed, ORM/OMI orders and ORU reports from each trust."""
