"""Chain-of-Zoom super-resolution, shared by the training data, the SR-quality reward and the evaluation.

- `backbones/`: the SR backbones, registered and loaded by name (`load_backbone`, `backbone_section`);
- `chain.py`: the zoom chain of every method, `recursive_chains` among them (the training data's chains
  are this function's, given their own crop windows);
- `colorfix.py`: the colour fix of a chain's states;
- `prompter.py`: the prompt sources of a chain, the VLM that writes prompts (`VLMPrompter`) among them.

It sits below `coz_train.data`, `coz_train.rewards` and `coz_train.eval` and imports none of them, except the
zoom geometry (`coz_train.data.zoom`) and the VLM's message (`coz_train.data.prompts`), two modules that
import nothing of the package.
"""
