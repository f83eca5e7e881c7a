"""Fleet mode (docs/fleet.md): one lineage shared by many hosts through S3 conditional writes."""
