"""kube-proxy's nftables mode: one private table (ip kube-proxy), verdict maps, numgen."""
