"""The reference router: asks the optimizer, then runs local, API or both."""
