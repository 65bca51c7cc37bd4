"""Routing data: the `RoutingTable` every trainer and evaluator consumes, and the loaders that build it.

Importing this package stays light (numpy only); loaders import pandas, pyarrow or the encoder
when they are called, so `import barp_ray.data` never pays for torch or the tokenizer.
"""
from barp_ray.data.llmrouter import load_llmrouter
from barp_ray.data.records import load_records, write_records
from barp_ray.data.routerbench import load_routerbench
from barp_ray.data.split import per_task_split, random_split, task_split
from barp_ray.data.synthetic import synthetic_table
from barp_ray.data.table import DataError, ModelPrice, RoutingTable, make_table

__all__ = [
    "RoutingTable",
    "ModelPrice",
    "DataError",
    "make_table",
    "per_task_split",
    "random_split",
    "task_split",
    "synthetic_table",
    "load_llmrouter",
    "load_routerbench",
    "load_records",
    "write_records",
]
