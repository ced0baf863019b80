// Node: reads JSON parameters from stdin, answers with the interpreter's name.
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const params = JSON.parse(input);
  console.log(JSON.stringify({ language: "node", greeting: `Hello, ${params.name}`, version: process.version }));
});
