"""What a weights file holds once read: the one record every reader (fastmae, official,
safetensors, Hugging Face) returns and every converter (hf, timm) accepts. Its own module,
so the readers and the converters both import it without importing each other."""
import dataclasses


@dataclasses.dataclass
class Checkpoint:
    state_dict: dict            # official key names, CPU tensors
    model_config: dict | None   # MaskedAutoencoderViT kwargs when the file says them
    raw: dict                   # what the file held (safetensors: {"metadata": {...}})
    path: str | None
    kind: str = "state_dict"    # fastmae | official | state_dict | safetensors | hf
