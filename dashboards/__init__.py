"""The Dash dashboard: timelines across nodes linked to the analyses."""
