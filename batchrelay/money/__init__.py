"""Money, pure: prices, token estimates, cost estimates, budget reservations, the ledger's arithmetic."""
