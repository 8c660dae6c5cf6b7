"""Tensors in and out (layer L3): checkpoints read one tensor at a time, the streaming safetensors
writer, encoding and decoding with bounded memory, building a task vector from a checkpoint
pair or a LoRA adapter, lossy codecs applied to a whole vector, stored bases read as
checkpoints, and the lazy :class:`TaskVector`.
"""

from tvreg.util.lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "build_task_vector": "build",
    "check_pair": "build",
    "compile_filter": "build",
    "exact_payload": "build",
    "exact_pipeline": "build",
    "finetuned_dtypes": "build",
    "parse_size": "hf_folder",
    "plan_shards": "hf_folder",
    "write_hf_folder": "hf_folder",
    "plan_pair": "build",
    "work_total": "build",
    "zero_vector_message": "build",
    "Checkpoint": "checkpoints",
    "InMemoryCheckpoint": "checkpoints",
    "TensorInfo": "checkpoints",
    "is_in_memory": "checkpoints",
    "open_checkpoint": "checkpoints",
    "DEFAULT_CHUNK_BYTES": "encoding",
    "TensorEncoder": "encoding",
    "decode_tensor": "encoding",
    "default_workers": "encoding",
    "exact_codec": "encoding",
    "restore_finetuned": "encoding",
    "delta_source": "lora",
    "read_adapter": "lora",
    "LossyEncoder": "lossy",
    "encode_vector": "lossy",
    "check_output_path": "outputs",
    "write_safetensors": "safetensors_io",
    "StoredBase": "stored_base",
    "TaskVector": "taskvector",
    "to_device": "taskvector",
}

__all__ = ["Checkpoint", "DEFAULT_CHUNK_BYTES", "InMemoryCheckpoint", "LossyEncoder",
           "StoredBase", "TaskVector", "TensorEncoder", "TensorInfo",
           "build_task_vector", "check_output_path", "check_pair", "compile_filter",
           "decode_tensor", "default_workers", "delta_source", "encode_vector",
           "exact_codec", "exact_payload", "exact_pipeline", "finetuned_dtypes",
           "is_in_memory", "open_checkpoint", "plan_pair", "read_adapter",
           "restore_finetuned", "to_device", "work_total", "write_safetensors",
           "parse_size", "plan_shards", "write_hf_folder",
           "zero_vector_message"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
