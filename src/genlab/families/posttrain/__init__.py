"""Post-training of language models (DeepSeek LLM's SFT then DPO): start from a run or a Hugging Face
checkpoint (`genlab train --init-from SRC`), supervised fine-tuning on conversations with the loss on
the assistant's tokens only (task = "sft"), preference optimisation (task = "dpo": DPO / IPO), and
the embedded offline data both use.

    embedded.py  instruction conversations and preference pairs built from Python's own docs
    chat.py      `genlab chat RUN`: a terminal chat through the run's chat template (ChatSession)
"""
