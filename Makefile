# Shortcuts for the README's commands.
.PHONY: demo test unit
demo:
	scripts/demo
test:
	scripts/test
unit:
	.venv/bin/python -m pytest tests/unit tests/integration -q
