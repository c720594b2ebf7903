"""The bundled offline environments; importing this package registers them by name.

Registered: stoichiometry, calculator_word_problems, molbio, hidden_law, protein_stability,
protein_stability_continuous.
"""

from envs.suite import hidden_law, molbio, protein_stability, stoichiometry, word_problems

__all__ = ["hidden_law", "molbio", "protein_stability", "stoichiometry", "word_problems"]
