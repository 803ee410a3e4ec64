"""The load test (`make loadtest`): locust scenarios, the SLO verdict and the report."""
