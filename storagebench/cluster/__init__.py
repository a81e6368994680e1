"""Sharded runs on Ray: users partitioned over K storage nodes, a load generator per shard, one merged row.

Ray is optional (``pip install 'storagebench[cluster]'``): it is imported only when a sharded run starts.
"""

from storagebench.cluster.merge import merge_shard_blocks
from storagebench.cluster.partition import merge_samples, shard_of, split_prepared, split_schedule
from storagebench.cluster.runtime import ClusterError, ClusterSpec
from storagebench.cluster.shards import run_store_sharded

__all__ = ["ClusterError", "ClusterSpec", "merge_samples", "merge_shard_blocks", "run_store_sharded", "shard_of",
           "split_prepared", "split_schedule"]
