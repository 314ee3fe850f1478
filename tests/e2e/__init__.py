"""End-to-end runs: whole flows, deployments, crashes and the UI, against real local servers."""
