"""Shared helpers for every kube-netlab agent.

Division of labour: ``client`` speaks the Kubernetes REST protocol (to apiserver_stub or a
real kube-apiserver), ``informer`` turns list + watch into a local cache with callbacks,
``model`` holds the frozen dataclasses the agents render from, ``cli`` and ``log`` give all
agents the same flags and log format. Nothing here imports an agent package.
"""
