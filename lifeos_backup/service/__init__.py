"""The running service: `up` supervises the workers, Beat, Flower and the metrics endpoint."""
