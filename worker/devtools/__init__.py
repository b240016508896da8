"""Tools for development only: embedded Postgres and Valkey, a sample JSON API, and the demo.

Used by ``make demo``, the test suite and the bench; never by production code, and not shipped
in the wheel or the Docker image (``harvester demo`` from an installed wheel says so). Only the
CLI's demo command imports it.
"""
