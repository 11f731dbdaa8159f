from pagehint.cli import entry

entry()
