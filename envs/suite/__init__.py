"""The bundled offline environments; importing this package registers them by name."""

from envs.suite import stoichiometry  # noqa: F401  (registers "stoichiometry")
from envs.suite import word_problems  # noqa: F401  (registers "calculator_word_problems")
from envs.suite import molbio  # noqa: F401  (registers "molbio")
from envs.suite import hidden_law  # noqa: F401  (registers "hidden_law")
from envs.suite import protein_stability  # noqa: F401  (registers "protein_stability", "protein_stability_continuous")
