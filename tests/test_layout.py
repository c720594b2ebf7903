"""The code base stays readable: no module over 500 lines in labrl's packages or benchmarks."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "benchmarks", "cluster", "configs", "envs", "launch", "models", "monitor", "rollout",
            "trainers")
MAX_LINES = 500


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert sizes, "no modules found: the package list is stale"
    too_long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them): {too_long}"
