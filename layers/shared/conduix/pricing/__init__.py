"""What things cost: the model catalog and its prices (catalog), subscription plans and the
features they enforce (plans), and a request's worst-case hold and actual charge (costs). Pure
computation over configuration: no store, no I/O beyond reading the catalog and plan files."""
