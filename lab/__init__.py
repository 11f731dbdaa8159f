"""Runs hosts and guests together: compare, demo, loadtest; reports, timelines, plots."""
