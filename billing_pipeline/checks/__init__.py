"""Asset checks: plain SQL over the billing database, as pure as a query can be."""
