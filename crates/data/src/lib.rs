//! Dataset stage: reads the recipe's `datasets`, renders prompts and chat templates, tokenizes, masks, packs and caches.
