"""Clinical-text building blocks shared by the twins: ConText over spaCy, its rules, sentence lookups."""
