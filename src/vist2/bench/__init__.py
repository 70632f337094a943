"""`vist2 bench`: text vs PCC vs GCC efficiency, measured and bounded.

- `scenarios`: the paper's long-writing / long-context grid and its prompts;
- `flops`: the LLM's closed-form FLOPs, counted pages, FLOPs counted by component, meta-device counts;
- `bounds`: the forwards each mode's layout implies, its KV peak and FLOP bounds;
- `run`: the measurement loop, tables and the JSON file; `plots`: Figure-4-style PNGs.
"""
