// The LoRA picker (our `loras` extension, docs/api.md): rows of an adapter and its weight, for
// a diffusion engine that offers adapters. The adapters are the engine's `loras` from
// GET /v1/engines/list; how many rows and which weights come from the OpenAPI document
// (limit); so the page keeps no copy of the server's rules.

export class LoraPicker {
  // `list` holds the rows, `add` is the button that adds one, `template` a row's <template>.
  constructor(list, add, template) {
    this.list = list;
    this.addButton = add;
    this.template = template;
    this.offered = []; // the engine's adapters
    this.most = Infinity; // rows (until the OpenAPI document says)
    this.weights = {}; // {minimum, maximum} of a weight
    add.addEventListener("click", () => this.add());
  }

  // The bounds of the request's `loras` field (an array, or null) and of one LoraRequest.
  limit(field, lora) {
    const list = field?.anyOf?.find((schema) => schema.type === "array") ?? field;
    this.most = list?.maxItems ?? Infinity;
    this.weights = lora?.properties?.weight ?? {};
    for (const row of this.rows()) this.bound(row.querySelector(".weight"));
    this.refresh();
  }

  // The adapters of the chosen engine (none: the picker is not shown); a row naming one it
  // does not offer is dropped.
  offer(names) {
    this.offered = [...names];
    for (const row of this.rows()) {
      if (!this.offered.includes(row.querySelector(".name").value)) row.remove();
    }
    this.refresh();
  }

  get available() {
    return this.offered.length > 0;
  }

  rows() {
    return [...this.list.querySelectorAll(".lora")];
  }

  names() {
    return this.rows().map((row) => row.querySelector(".name").value);
  }

  // A row with the first adapter no row names yet (none left, or rows enough: no row).
  add() {
    const taken = this.names();
    const name = this.offered.find((offered) => !taken.includes(offered));
    if (name === undefined || taken.length >= this.most) return;
    const row = this.template.content.firstElementChild.cloneNode(true);
    const select = row.querySelector(".name");
    select.append(new Option(name, name));
    select.value = name;
    select.addEventListener("change", () => this.refresh());
    this.bound(row.querySelector(".weight"));
    row.querySelector(".remove").addEventListener("click", () => {
      row.remove();
      this.refresh();
    });
    this.list.append(row);
    this.refresh();
  }

  bound(input) {
    const { minimum, maximum } = this.weights;
    if (minimum !== undefined) input.min = String(minimum);
    if (maximum !== undefined) input.max = String(maximum);
  }

  // Each row's menu: the engine's adapters, those another row names disabled (each adapter
  // at most once). Adding is possible while an adapter is left and rows are fewer than allowed.
  refresh() {
    const rows = this.rows();
    const taken = this.names();
    for (const row of rows) {
      const select = row.querySelector(".name");
      const own = select.value;
      select.replaceChildren(
        ...this.offered.map((name) => {
          const option = new Option(name, name);
          option.disabled = name !== own && taken.includes(name);
          return option;
        }),
      );
      select.value = own;
    }
    this.addButton.disabled = taken.length >= Math.min(this.most, this.offered.length);
  }

  // The request's `loras`: [{name, weight}] (an empty weight: left out, the server's default).
  chosen() {
    return this.rows().map((row) => {
      const weight = row.querySelector(".weight").value.trim();
      const name = row.querySelector(".name").value;
      return weight === "" ? { name } : { name, weight: Number(weight) };
    });
  }
}
