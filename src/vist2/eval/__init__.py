"""Evaluation: the quality half of VIST2, the same task in text, pcc and gcc modes.

Every benchmark turns its data into `EvalSample`s and scores predictions on a 0-100 scale;
one runner generates each sample in each mode and writes tidy `Row`s (`results.json`).
"""
