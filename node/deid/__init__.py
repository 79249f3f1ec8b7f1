"""PS3.15 Annex E de-identification: profile table, actions, value rules, the file walker."""
