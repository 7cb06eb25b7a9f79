"""Running Rimer as a cluster: deploy/local.sh (loopback), deploy/k8s/ (Kubernetes), and
deploy/rebalance.py (moving series when the replicas change)."""
