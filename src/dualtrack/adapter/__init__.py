"""The adaptation half: signals, strategy rules, the loop that publishes preferences."""
