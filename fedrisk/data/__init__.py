"""A party's data: its table and its validation, credit codes, the synthetic generator, train/test splits."""
