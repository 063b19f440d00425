from fer_triton.cli import main

main()
