"""DeepSeek-V3 architecture: Multi-head Latent Attention (mla), DeepSeekMoE with auxiliary-loss-free
balancing (moe), multi-token prediction and self-speculative decoding (mtp), the model (model)."""
