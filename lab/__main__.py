"""``python -m lab`` (what netns-lab.sh runs): the lab CLI."""

from .cli import main

main(prog_name="netns-lab.sh")
