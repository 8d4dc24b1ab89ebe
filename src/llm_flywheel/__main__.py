"""`python -m llm_flywheel` == `flywheel` (imports the CLI module once, so click's context types match)."""

from llm_flywheel.interfaces.cli import main

main()
